"""Format helpers: the SIIM run-length codec, DICOM reading, image decoding of every PNG/JPEG mode."""
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from cgns.data.cache import ImageError, read_image
from cgns.data.dicom import DicomError, read_dicom
from cgns.data.rle import RLEError, rle_decode, rle_decode_union, rle_encode


def test_rle_hand_computed_relative_column_major():
    # Column-major pixel order of a 3x2 image: (0,0) (1,0) (2,0) (0,1) (1,1) (2,1).
    # "1 2 2 1": skip 1, run of 2 -> pixels 1,2 ; skip 2 after the run's end -> pixel 5, run 1.
    mask = rle_decode(" 1 2 2 1 ", 3, 2)
    assert mask.tolist() == [[0, 0], [1, 0], [1, 1]]
    assert rle_encode(mask) == "1 2 2 1"
    assert rle_encode(np.zeros((4, 4))) == "-1"
    assert rle_decode(" -1", 4, 4).sum() == 0


def test_rle_round_trip_and_union():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(3, 30, 2)
        mask = (rng.random((h, w)) < 0.4).astype(np.uint8)
        assert np.array_equal(rle_decode(rle_encode(mask), h, w), mask)
    a = np.zeros((8, 6), np.uint8)
    b = np.zeros((8, 6), np.uint8)
    a[1:4, 1:3] = 1
    b[3:7, 2:5] = 1
    assert np.array_equal(rle_decode_union([rle_encode(a), rle_encode(b)], 8, 6), a | b)


@pytest.mark.parametrize("rle,message", [
    ("1 2 3", "odd number of values"), ("4 x", "non-integer value 'x'"), ("2 0", "non-positive length"),
    ("10 10", "beyond the 4x4 image"),
])
def test_rle_malformed_names_where(rle, message):
    with pytest.raises(RLEError, match=message) as info:
        rle_decode(rle, 4, 4, where="train-rle.csv: row 7, field 'EncodedPixels'")
    assert "train-rle.csv: row 7" in str(info.value)


def _dicom(path, pixels, photometric="MONOCHROME2", bits=8, window=None, slope=None, voi_lut=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, "1.2.3.4"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelRepresentation = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8, 8, 7) if bits == 8 else (16, bits, bits - 1)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 8]
        item.LUTData = np.asarray(voi_lut, dtype=np.uint16).tobytes()
        ds.VOILUTSequence = [item]
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint8 if bits == 8 else np.uint16)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = np.arange(4 * 64, dtype=np.uint8).reshape(4, 64)
    assert np.array_equal(read_dicom(_dicom(tmp_path / "m2.dcm", pixels)), pixels)
    assert np.array_equal(read_dicom(_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")), 255 - pixels)


def test_dicom_window_and_voi_lut_are_applied(tmp_path):
    values = np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8)
    # A narrow window: everything below centre - width/2 is black, above centre + width/2 white.
    windowed = read_dicom(_dicom(tmp_path / "w.dcm", values, bits=12, window=(2048, 1024)))
    assert windowed[values < 1500].max() == 0 and windowed[values > 2600].min() == 255
    middle = (values > 1700) & (values < 2400)
    assert 0 < windowed[middle].min() and windowed[middle].max() < 255
    # Without a window, a 12-bit image uses the full 8-bit range.
    plain = read_dicom(_dicom(tmp_path / "p.dcm", values, bits=12))
    assert plain.min() == 0 and plain.max() == 255
    # A VOI LUT table (here: a step at stored value 128) replaces the values.
    lut = np.where(np.arange(256) < 128, 0, 255)
    step = read_dicom(_dicom(tmp_path / "l.dcm", np.arange(256, dtype=np.uint8).reshape(16, 16), voi_lut=lut))
    assert np.array_equal(step.reshape(-1) > 127, np.arange(256) >= 128)


def test_dicom_unreadable_is_named(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom at all")
    with pytest.raises(DicomError, match="bad.dcm: unreadable DICOM"):
        read_dicom(bad)
    good = _dicom(tmp_path / "cut.dcm", np.zeros((64, 64), np.uint8))
    good.write_bytes(good.read_bytes()[:-2000])  # truncated pixel data
    with pytest.raises(DicomError, match="cut.dcm"):
        read_dicom(good)


def test_images_of_every_mode_decode_to_grey(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (30, 1))  # [30, 25]
    rgb = np.stack([grey] * 3, -1)
    cases = {
        "l.png": Image.fromarray(grey, "L"),
        "rgb.png": Image.fromarray(rgb, "RGB"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full_like(grey, 255)]), "RGBA"),
        "p.png": Image.fromarray(rgb, "RGB").quantize(256),
        "i16.png": Image.fromarray(grey.astype(np.uint16) * 257),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        out = read_image(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (30, 25), name
        # 16-bit data are min-max scaled to 8 bits.
        expected = (grey - grey.min()) / np.ptp(grey) * 255 if name == "i16.png" else grey
        assert np.abs(out.astype(int) - expected).max() <= 2, name
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "x.jpg").astype(int) - grey).mean() < 3
    # Transparent pixels are composited onto black.
    half = np.dstack([rgb, np.where(np.arange(25) < 12, 0, 255).astype(np.uint8)[None].repeat(30, 0)])
    Image.fromarray(half, "RGBA").save(tmp_path / "alpha.png")
    assert read_image(tmp_path / "alpha.png")[:, :12].max() == 0


def test_missing_and_truncated_images_raise_named_errors(tmp_path):
    with pytest.raises(ImageError, match="nothere.png: image file not found"):
        read_image(tmp_path / "nothere.png")
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ImageError, match="cut.jpg: cannot decode image"):
        read_image(path)


def test_reduced_jpeg_decoding_keeps_the_original_frame(tmp_path):
    """Large JPEGs are decoded at reduced resolution for the cache; boxes refer to the file's own pixel frame."""
    from cgns.data.cache import read_image_sized
    from cgns.data.transforms import resize_pad

    image = np.zeros((1200, 900), np.uint8)
    image[400:800, 100:500] = 255
    Image.fromarray(image).save(tmp_path / "big.jpg", quality=95)
    reduced, size = read_image_sized(tmp_path / "big.jpg", min_size=256)
    assert size == (1200, 900) and max(reduced.shape) < 1200
    square, placement = resize_pad(reduced, 256, original_shape=size)
    x1, y1, x2, y2 = placement.boxes(np.array([[100, 400, 500, 800]]))[0]
    rows, cols = np.nonzero(square > 127)
    assert abs(cols.min() - x1) <= 1 and abs(cols.max() + 1 - x2) <= 1
    assert abs(rows.min() - y1) <= 1 and abs(rows.max() + 1 - y2) <= 1
