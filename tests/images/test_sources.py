"""read_source (folders, tables, path lists, DataFrames) and load_image (modes, EXIF, failures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedkit.errors import InputError
from embedkit.images.decode import load_image
from embedkit.images.sources import IMAGE_EXTENSIONS, read_source

# Pillow format for each extension we write (the extension's case does not matter to Pillow).
FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def write_image(path: Path, size: tuple[int, int] = (16, 12), seed: int = 0) -> Path:
    """A small random RGB image in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(path, format=FORMATS[path.suffix.lower()])
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# -- folders ------------------------------------------------------------------------


def test_folder_is_scanned_recursively_for_every_image_extension(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    images = [
        "a.jpg",
        "b.JPEG",
        "c.png",
        "d.WebP",
        "e.bmp",
        "f.GIF",
        "sub/g.tiff",
        "sub/h.TIF",
        "sub/deeper/i.JPG",
        "sub/deeper/j.PNG",
    ]
    for k, name in enumerate(images):
        write_image(root / name, seed=k)
    # Not images: other extensions, an extensionless file, a folder named like an image.
    (root / "notes.txt").write_text("hello")
    (root / "sub" / "labels.csv").write_text("path\na.jpg\n")
    (root / "sub" / "README").write_text("x")
    (root / "c.png.bak").write_bytes(b"old")
    (root / "album.png").mkdir()
    write_image(root / "album.png" / "k.png", seed=99)  # a real image inside it still counts

    rows = read_source(root)

    expected = sorted([*images, "album.png/k.png"], key=lambda s: s.split("/"))
    assert rows.columns.tolist() == ["id", "path"]
    assert rows["id"].tolist() == expected
    assert all("\\" not in i for i in rows["id"])  # posix ids on every platform
    for id_, path in zip(rows["id"], rows["path"], strict=True):
        assert Path(path).is_absolute()
        assert Path(path) == (root / id_).resolve()
    # Every extension the scanner promises is covered above.
    assert {Path(i).suffix.lower() for i in rows["id"]} == IMAGE_EXTENSIONS


def test_folder_ids_are_sorted_and_stable_across_calls(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    # Written out of order, in nested folders.
    for k, name in enumerate(["z.png", "m/b.png", "a.png", "m/a.png", "b/c/d.png"]):
        write_image(root / name, seed=k)
    first = read_source(root)
    second = read_source(str(root))  # str and Path sources agree
    pd.testing.assert_frame_equal(first, second)
    assert first["id"].tolist() == ["a.png", "b/c/d.png", "m/a.png", "m/b.png", "z.png"]


def test_relative_folder_source_gives_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    write_image(tmp_path / "imgs" / "x.png")
    monkeypatch.chdir(tmp_path)
    rows = read_source("imgs")
    assert rows["id"].tolist() == ["x.png"]
    assert rows["path"].tolist() == [str((tmp_path / "imgs" / "x.png").resolve())]


def test_missing_source_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        read_source(tmp_path / "nope")
    message = one_line(exc)
    assert str(tmp_path / "nope") in message
    assert "does not exist" in message


def test_empty_folder_is_an_input_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images") as exc:
        read_source(empty)
    assert str(empty) in one_line(exc)

    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="holds no images"):
        read_source(empty)


def test_a_file_that_is_neither_table_nor_folder_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(InputError, match=r"neither an image folder nor a \.parquet/\.csv table"):
        read_source(notes)


def test_unreadable_table_is_an_input_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="cannot read table") as exc:
        read_source(broken)
    assert str(broken) in one_line(exc)


# -- tables -------------------------------------------------------------------------


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    """``meta/`` holding ``imgs/0.png`` .. ``imgs/3.png``; tables go in ``meta/``."""
    folder = tmp_path / "meta"
    for i in range(4):
        write_image(folder / "imgs" / f"{i}.png", seed=i)
    return folder


def carried_frame(folder: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [
                "imgs/0.png",
                "imgs/1.png",
                "./imgs/2.png",
                str(folder / "imgs" / "3.png"),  # absolute paths stay as they are
            ],
            "label": ["cat", "dog", "cat", "bird"],
            "score": [0.5, 1.5, 2.5, 3.5],
            "count": [1, 2, 3, 4],
        }
    )


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_table_paths_resolve_against_the_table_folder(
    table_dir: Path, tmp_path: Path, monkeypatch, kind: str
) -> None:
    frame = carried_frame(table_dir)
    table = table_dir / f"labels.{kind}"
    if kind == "parquet":
        frame.to_parquet(table, index=False)
    else:
        frame.to_csv(table, index=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not depend on the working directory

    rows = read_source(table)

    assert rows.columns.tolist() == ["id", "path", "label", "score", "count"]
    # No id column: the id is the path as written (posix).
    assert rows["id"].tolist() == [
        "imgs/0.png",
        "imgs/1.png",
        "imgs/2.png",
        (table_dir / "imgs" / "3.png").as_posix(),
    ]
    assert [Path(p).resolve() for p in rows["path"]] == [
        (table_dir / "imgs" / f"{i}.png").resolve() for i in range(4)
    ]
    assert all(Path(p).is_file() for p in rows["path"])
    assert rows["label"].tolist() == ["cat", "dog", "cat", "bird"]
    assert rows["score"].tolist() == [0.5, 1.5, 2.5, 3.5]
    assert rows["count"].tolist() == [1, 2, 3, 4]
    assert rows["count"].dtype.kind == "i"


def test_default_id_column_is_used_and_not_carried(table_dir: Path) -> None:
    frame = carried_frame(table_dir).assign(id=["a", "b", "c", "d"])
    frame.to_csv(table_dir / "t.csv", index=False)
    rows = read_source(table_dir / "t.csv")
    assert rows["id"].tolist() == ["a", "b", "c", "d"]
    assert rows.columns.tolist() == ["id", "path", "label", "score", "count"]


def test_numeric_id_column_becomes_strings(table_dir: Path) -> None:
    frame = carried_frame(table_dir).assign(id=[10, 11, 12, 13])
    frame.to_parquet(table_dir / "t.parquet")
    rows = read_source(table_dir / "t.parquet")
    assert rows["id"].tolist() == ["10", "11", "12", "13"]


def test_configurable_path_and_id_columns(table_dir: Path) -> None:
    frame = carried_frame(table_dir).rename(columns={"path": "file"})
    frame["key"] = ["k0", "k1", "k2", "k3"]
    frame.to_csv(table_dir / "t.csv", index=False)
    rows = read_source(table_dir / "t.csv", path_column="file", id_column="key")
    assert rows["id"].tolist() == ["k0", "k1", "k2", "k3"]
    assert rows.columns.tolist() == ["id", "path", "label", "score", "count"]
    assert Path(rows["path"].iloc[1]) == table_dir.resolve() / "imgs" / "1.png"


def test_reserved_column_names_do_not_duplicate_id_or_path(table_dir: Path) -> None:
    # An "id" column that is not the chosen id, a "path" column that is not the chosen path:
    # the output must still have exactly one id and one path column.
    frame = carried_frame(table_dir).rename(columns={"path": "file"})
    frame["path"] = ["unrelated"] * 4
    frame["id"] = ["i0", "i1", "i2", "i3"]
    frame["key"] = ["k0", "k1", "k2", "k3"]
    frame["source"] = ["s"] * 4
    frame["embedding"] = [0] * 4
    rows = read_source(frame, path_column="file", id_column="key")
    assert rows.columns.tolist() == ["id", "path", "label", "score", "count"]
    assert rows["id"].tolist() == ["k0", "k1", "k2", "k3"]
    assert rows["path"].iloc[0].endswith("0.png")


def test_id_column_may_be_the_path_column(table_dir: Path) -> None:
    rows = read_source(carried_frame(table_dir).iloc[:2], id_column="path")
    assert rows["id"].tolist() == ["imgs/0.png", "imgs/1.png"]
    assert rows.columns.tolist() == ["id", "path", "label", "score", "count"]


def test_missing_path_column_names_file_columns_and_flag(table_dir: Path) -> None:
    frame = carried_frame(table_dir).rename(columns={"path": "filename"})
    table = table_dir / "t.csv"
    frame.to_csv(table, index=False)
    with pytest.raises(InputError) as exc:
        read_source(table)
    message = one_line(exc)
    assert str(table) in message
    assert "'path'" in message
    for column in ("filename", "label", "score", "count"):
        assert column in message
    assert "--path-column" in message


def test_missing_id_column_is_named(table_dir: Path) -> None:
    with pytest.raises(InputError, match="no id column 'key'") as exc:
        read_source(carried_frame(table_dir), id_column="key")
    assert "label" in one_line(exc)


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_empty_path_cell_names_the_row(table_dir: Path, blank) -> None:
    frame = carried_frame(table_dir)
    frame["path"] = frame["path"].astype(object)
    frame.loc[2, "path"] = blank
    table = table_dir / "t.parquet"
    frame.to_parquet(table)
    with pytest.raises(InputError) as exc:
        read_source(table)
    message = one_line(exc)
    assert "row 2" in message
    assert str(table) in message
    assert "'path'" in message


@pytest.mark.parametrize("id_column", [None, "key"])
def test_empty_id_cell_names_the_row(table_dir: Path, id_column) -> None:
    # Regression: a missing id became NaN (or "1.0"-style floats) and crashed the writer.
    name = id_column or "id"
    frame = carried_frame(table_dir).assign(**{name: [1, 2, None, 4]})
    frame.to_parquet(table_dir / "t.parquet")
    with pytest.raises(InputError) as exc:
        read_source(table_dir / "t.parquet", id_column=id_column)
    message = one_line(exc)
    assert "row 2" in message
    assert repr(name) in message


def test_empty_path_cell_in_csv(table_dir: Path) -> None:
    table = table_dir / "t.csv"
    table.write_text("path,label\nimgs/0.png,a\n,b\nimgs/1.png,c\n")
    with pytest.raises(InputError, match="row 1"):
        read_source(table)


def test_duplicate_ids_name_the_id(table_dir: Path) -> None:
    frame = carried_frame(table_dir)
    frame.loc[3, "path"] = "imgs/1.png"
    with pytest.raises(InputError) as exc:
        read_source(frame)
    message = one_line(exc)
    assert "duplicate id 'imgs/1.png'" in message
    assert "row 3" in message

    frame = carried_frame(table_dir).assign(id=["a", "b", "a", "c"])
    frame.to_csv(table_dir / "t.csv", index=False)
    with pytest.raises(InputError, match="duplicate id 'a' at row 2"):
        read_source(table_dir / "t.csv")


def test_empty_table_is_an_input_error(table_dir: Path) -> None:
    table = table_dir / "t.csv"
    table.write_text("path,label\n")
    with pytest.raises(InputError, match="holds no images"):
        read_source(table)


# -- path lists and DataFrames --------------------------------------------------------


def test_path_list_ids_are_relative_to_the_common_root(tmp_path: Path) -> None:
    a = write_image(tmp_path / "root" / "x" / "a.png")
    b = write_image(tmp_path / "root" / "y" / "z" / "b.jpg")
    c = write_image(tmp_path / "root" / "c.bmp")
    rows = read_source([str(a), b, c])  # str and Path mixed; order kept
    assert rows["id"].tolist() == ["x/a.png", "y/z/b.jpg", "c.bmp"]
    assert rows["path"].tolist() == [str(p.resolve()) for p in (a, b, c)]
    assert rows.columns.tolist() == ["id", "path"]

    single = read_source([b])
    assert single["id"].tolist() == ["b.jpg"]
    assert read_source((a, c))["id"].tolist() == ["x/a.png", "c.bmp"]


def test_path_list_duplicates_and_empty_list(tmp_path: Path) -> None:
    a = write_image(tmp_path / "a.png")
    with pytest.raises(InputError, match=r"duplicate id 'a\.png'"):
        read_source([a, a])
    with pytest.raises(InputError, match="holds no images"):
        read_source([])


def test_dataframe_source_resolves_against_cwd(table_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(table_dir)
    frame = carried_frame(table_dir).assign(id=["a", "b", "c", "d"])
    frame.index = [7, 3, 9, 1]  # a non-default index must not misalign carried columns
    rows = read_source(frame)
    assert rows["id"].tolist() == ["a", "b", "c", "d"]
    assert rows["label"].tolist() == ["cat", "dog", "cat", "bird"]
    assert rows["score"].tolist() == [0.5, 1.5, 2.5, 3.5]
    assert [Path(p).resolve() for p in rows["path"]] == [
        (table_dir / "imgs" / f"{i}.png").resolve() for i in range(4)
    ]


def test_dataframe_missing_path_column(table_dir: Path) -> None:
    with pytest.raises(InputError, match="DataFrame has no path column 'file'"):
        read_source(carried_frame(table_dir), path_column="file")


# -- load_image -----------------------------------------------------------------------


def test_grayscale_becomes_rgb_with_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    assert image.mode == "RGB"
    assert image.size == (8, 6)
    array = np.asarray(image)
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], gray)


def test_rgba_transparency_becomes_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red-ish everywhere
    rgba[0, 0, 3] = 0  # fully transparent -> white
    rgba[0, 1, 3] = 255  # opaque -> the colour itself
    rgba[0, 2, 3] = 128  # half -> halfway to white
    rgba[1, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    array = np.asarray(image).astype(int)
    assert array[0, 0].tolist() == [255, 255, 255]
    assert array[0, 1].tolist() == [200, 0, 0]
    assert array[1, 2].tolist() == [200, 0, 0]
    np.testing.assert_allclose(array[0, 2], [228, 128, 128], atol=2)


def test_la_transparency_becomes_white(tmp_path: Path) -> None:
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[0, 0, 1] = 255
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    array = np.asarray(load_image(tmp_path / "la.png"))
    assert array[0, 0].tolist() == [40, 40, 40]
    assert array[1, 1].tolist() == [255, 255, 255]


def test_palette_becomes_rgb(tmp_path: Path) -> None:
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9))
    palette.putdata([0, 1, 2])
    palette.save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    assert image.mode == "RGB"
    assert np.asarray(image).tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]

    # A palette image with a transparent index: that index becomes white.
    palette.save(tmp_path / "pt.png", transparency=1)
    assert np.asarray(load_image(tmp_path / "pt.png")).tolist() == [
        [[255, 0, 0], [255, 255, 255], [0, 0, 255]]
    ]
    palette.save(tmp_path / "p.gif")
    assert np.asarray(load_image(tmp_path / "p.gif")).tolist() == [
        [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    ]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    # Regression: convert("RGB") clipped 16-bit samples to 255, so the image came out white.
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode.startswith("I;16")
    array = np.asarray(load_image(tmp_path / "g16.png")).astype(int)
    assert array.shape == (8, 8, 3)
    np.testing.assert_allclose(array[..., 0], ramp / 257, atol=1)
    assert array.min() == 0
    assert array.max() >= 254
    assert 120 < array.mean() < 135


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    image = load_image(tmp_path / "c.jpg")
    assert image.mode == "RGB"
    np.testing.assert_allclose(np.asarray(image)[0, 0], [255, 0, 255], atol=3)


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    # 40 wide x 20 high: left half red, right half blue.
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20, 0] = 255
    array[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(array).save(tmp_path / "o.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "o.jpg") as raw:
        assert raw.size == (40, 20)

    image = load_image(tmp_path / "o.jpg")
    assert image.size == (20, 40)  # transposed
    loaded = np.asarray(image).astype(int)
    # Rotated clockwise, the left (red) half ends up on top, the blue half at the bottom.
    assert loaded[2, 10, 0] > 200 and loaded[2, 10, 2] < 60
    assert loaded[37, 10, 2] > 200 and loaded[37, 10, 0] < 60

    Image.fromarray(array).save(tmp_path / "plain.jpg")
    assert load_image(tmp_path / "plain.jpg").size == (40, 20)


def test_load_image_result_outlives_the_file(tmp_path: Path) -> None:
    path = write_image(tmp_path / "x.png", size=(5, 4))
    image = load_image(path)
    path.unlink()
    assert np.asarray(image).shape == (4, 5, 3)  # decoded eagerly, file closed


def test_unreadable_files_raise_oserror(tmp_path: Path) -> None:
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG this is not an image")
    (tmp_path / "zero.jpg").write_bytes(b"")
    full = write_image(tmp_path / "full.jpg", size=(64, 64))
    data = full.read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    for name in ("garbage.png", "zero.jpg", "half.jpg"):
        with pytest.raises(OSError):
            load_image(tmp_path / name)
    with pytest.raises(OSError):
        load_image(tmp_path / "missing.png")
