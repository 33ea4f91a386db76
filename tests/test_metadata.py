"""Loading and validating HAM10000's metadata file."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from dataset import CLASS_NAMES, load_metadata
from dataset.metadata import stratified_subset

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


def write_csv(tmp_path, *lines):
    path = tmp_path / "metadata.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_real_metadata_keeps_every_row(ham_metadata):
    assert len(ham_metadata) == 10015
    assert ham_metadata["lesion_id"].nunique() == 7470
    counts = ham_metadata["dx"].value_counts().to_dict()
    assert counts == {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
    # Missing values are kept as explicit unknowns, not dropped.
    assert ham_metadata["age"].isna().sum() == 57
    assert (ham_metadata["sex"] == "unknown").sum() == 57
    assert (ham_metadata["localization"] == "unknown").sum() == 234


def test_missing_optional_values_become_unknown(tmp_path):
    path = write_csv(tmp_path, HEADER, "L1,I1,mel,histo,,,", "L2,I2,nv,histo,45,Female,back")
    metadata = load_metadata(path)
    assert np.isnan(metadata.loc[0, "age"])
    assert metadata.loc[0, "sex"] == "unknown" and metadata.loc[0, "localization"] == "unknown"
    assert metadata.loc[1, "age"] == 45.0 and metadata.loc[1, "sex"] == "female"


def test_optional_columns_may_be_absent(tmp_path):
    metadata = load_metadata(write_csv(tmp_path, "lesion_id,image_id,dx", "L1,I1,bcc"))
    assert metadata.loc[0, "sex"] == "unknown" and np.isnan(metadata.loc[0, "age"])


@pytest.mark.parametrize(
    "lines, message",
    [
        (["lesion_id,image_id,age", "L1,I1,30"], "missing column 'dx'"),
        ([HEADER, "L1,I1,nv,histo,30,male,back", "L2,I2,melanoma,histo,30,male,back"], "line 3: unknown dx 'melanoma'"),
        (
            [HEADER, "L1,I1,nv,histo,30,male,back", "L2,I1,nv,histo,30,male,back"],
            "line 3: image_id 'I1' appears more than once",
        ),
        ([HEADER, "L1,I1,nv,histo,thirty,male,back"], "line 2: age 'thirty' is not a number"),
        ([HEADER, ",I1,nv,histo,30,male,back"], "line 2: empty lesion_id"),
        ([HEADER], "has a header but no rows"),
        ([], "not a readable CSV file (No columns to parse from file)"),
    ],
)
def test_malformed_file_gets_one_line_error_naming_file_and_line(tmp_path, lines, message):
    path = write_csv(tmp_path, *lines)
    with pytest.raises(DataError) as error:
        load_metadata(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="metadata file not found"):
        load_metadata(tmp_path / "nope.csv")


def test_stratified_subset_keeps_class_shares_and_every_class(ham_metadata):
    subset = stratified_subset(ham_metadata, 200, seed=1)
    assert len(subset) == 200
    assert set(subset["dx"]) == set(CLASS_NAMES)
    assert abs((subset["dx"] == "nv").mean() - 6705 / 10015) < 0.02
    assert subset.equals(stratified_subset(ham_metadata, 200, seed=1))


def test_reading_metadata_does_not_start_keras():
    # `import dataset` for load_metadata, a split or the class names must not pay TensorFlow's start-up.
    code = "import sys, dataset; dataset.load_metadata; assert not {'keras', 'tensorflow', 'jax'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
