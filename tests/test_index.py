from __future__ import annotations

from pathlib import Path

import pytest

from conftest import csv_lines, write_lines
from mura.data.index import (
    BODY_PARTS,
    INDEX_COLUMNS,
    MuraDataError,
    build_index,
    parse_body_parts,
    scan_release,
)


def test_index_has_one_row_per_listed_image_with_study_labels(synthetic_root: Path):
    table = build_index(synthetic_root)
    assert list(table.columns) == INDEX_COLUMNS
    listed = csv_lines(synthetic_root / "train_image_paths.csv") + csv_lines(synthetic_root / "valid_image_paths.csv")
    assert len(table) == len(listed)
    studies = dict(
        (line.split(",")[0].removeprefix("MURA-v1.1/").rstrip("/"), int(line.split(",")[1]))
        for name in ("train_labeled_studies.csv", "valid_labeled_studies.csv")
        for line in csv_lines(synthetic_root / name)
    )
    assert table.groupby("study")["label"].first().to_dict() == studies
    assert set(table["split"]) == {"train", "valid"}
    assert set(table["body_part"]) == set(BODY_PARTS)
    assert (table["view"] >= 1).all()


def test_study_key_is_the_full_folder_path(synthetic_root: Path):
    table = build_index(synthetic_root)
    short_key = table["patient"] + "/" + table["study"].str.rsplit("/", n=1).str[-1]
    # The generator gives some patients studies in two body parts, as MURA does: the short key collides.
    assert short_key.nunique() < table["study"].nunique()
    assert table.groupby("study")["body_part"].nunique().max() == 1


def test_body_part_filter(synthetic_root: Path):
    table = build_index(synthetic_root, body_parts=["wrist", "XR_HAND"])
    assert set(table["body_part"]) == {"XR_WRIST", "XR_HAND"}
    assert parse_body_parts("all") == list(BODY_PARTS)
    with pytest.raises(MuraDataError, match="unknown body part 'XR_KNEE'"):
        parse_body_parts(["XR_KNEE"])


def test_header_row_and_crlf_are_tolerated(writable_root: Path):
    images = writable_root / "train_image_paths.csv"
    studies = writable_root / "train_labeled_studies.csv"
    reference = build_index(writable_root)
    write_lines(images, ["Img_Path", *csv_lines(images)], newline="\r\n")
    write_lines(studies, ["path, label", *csv_lines(studies)], newline="\r\n")
    assert build_index(writable_root).equals(reference)


def test_duplicate_rows_are_counted_and_ignored(writable_root: Path):
    images = writable_root / "train_image_paths.csv"
    lines = csv_lines(images)
    write_lines(images, [*lines, lines[0]])
    scan = scan_release(writable_root)
    assert scan.count("duplicate_row") == 1
    assert len(build_index(writable_root)) == len(build_index(writable_root).drop_duplicates("path"))


def test_sidecars_and_unlisted_files_are_ignored(writable_root: Path):
    scan = scan_release(writable_root)
    assert scan.count("sidecar_file") == 2
    assert not scan.table["path"].str.contains("/._").any()
    study_dir = writable_root / scan.table["study"].iloc[0]
    (study_dir / "notes.txt").write_text("not an image")
    assert scan_release(writable_root).count("unlisted_file") == 1


def test_missing_root_says_where_mura_comes_from(tmp_path: Path):
    with pytest.raises(MuraDataError, match="data=synthetic"):
        build_index(tmp_path / "nowhere")
    with pytest.raises(MuraDataError, match="not set"):
        build_index(None)


def test_missing_csv_is_named(writable_root: Path):
    (writable_root / "valid_labeled_studies.csv").unlink()
    with pytest.raises(MuraDataError, match="valid_labeled_studies.csv: missing"):
        build_index(writable_root)


def test_malformed_line_is_named_with_its_number(writable_root: Path):
    studies = writable_root / "train_labeled_studies.csv"
    lines = csv_lines(studies)
    lines[2] = lines[2] + ",extra"
    write_lines(studies, lines)
    with pytest.raises(MuraDataError, match=r"train_labeled_studies.csv line 3: expected 2 column"):
        build_index(writable_root)
    lines[2] = lines[3].split(",")[0] + ",yes"
    write_lines(studies, lines)
    with pytest.raises(MuraDataError, match=r"line 3: label 'yes' is not 0"):
        build_index(writable_root)


def test_listed_but_missing_image_is_an_error_or_a_counted_skip(writable_root: Path, caplog):
    table = build_index(writable_root)
    gone = table[table["split"] == "train"]["path"].iloc[5]
    (writable_root / gone).unlink()
    with pytest.raises(MuraDataError, match=r"1 image\(s\) listed .* line \d+: " + gone):
        build_index(writable_root)
    skipped = build_index(writable_root, on_bad_image="skip")
    assert len(skipped) == len(table) - 1 and gone not in set(skipped["path"])
    assert "Skipping them" in caplog.text


def test_label_disagreeing_with_folder_is_an_error(writable_root: Path):
    studies = writable_root / "train_labeled_studies.csv"
    lines = csv_lines(studies)
    path, label = lines[0].split(",")
    lines[0] = f"{path},{1 - int(label)}"
    write_lines(studies, lines)
    with pytest.raises(MuraDataError, match="label mismatch.*line 1 labels it"):
        build_index(writable_root)


def test_unknown_body_part_in_csv_is_named(writable_root: Path):
    images = writable_root / "train_image_paths.csv"
    lines = csv_lines(images)
    lines[1] = lines[1].replace(lines[1].split("/")[2], "XR_KNEE")
    write_lines(images, lines)
    with pytest.raises(MuraDataError, match="train_image_paths.csv line 2: unknown body part 'XR_KNEE'"):
        build_index(writable_root)


@pytest.mark.parametrize("bad", ["MURA-v1.1/train/../../etc/passwd/x/y.png", "/etc/train/XR_WRIST/patient1/study1_positive/a.png"])
def test_path_escaping_the_root_is_refused(writable_root: Path, bad: str):
    images = writable_root / "train_image_paths.csv"
    write_lines(images, [bad, *csv_lines(images)])
    with pytest.raises(MuraDataError, match="line 1: path .* escapes data.root"):
        build_index(writable_root)


def test_empty_train_split_is_an_error(writable_root: Path):
    (writable_root / "train_image_paths.csv").write_text("")
    with pytest.raises(MuraDataError, match="train split has no images"):
        build_index(writable_root)


def test_empty_valid_split_means_no_test_rows(writable_root: Path):
    (writable_root / "valid_image_paths.csv").write_text("")
    (writable_root / "valid_labeled_studies.csv").write_text("")
    table = build_index(writable_root)
    assert (table["split"] == "train").all()
