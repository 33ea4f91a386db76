"""What every stage shares, at the bottom of the import graph: it imports no other package here.

common.errors      UserError (bad input, reported in one line) and its kinds; anything else is a bug
common.console     the native libraries' start-up lines kept off the console
common.files       files written whole or not at all, new (timestamped) folders that never reuse old ones
common.tables      CSV files read with one-line errors that name the file, line and column
common.run_folder  the run folder's layout: file names, history columns, readers and writers
"""
