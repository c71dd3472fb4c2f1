"""Message <-> array conversion, including the malformed inputs a robot can send."""
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from m3_ros.msg import LabeledInstance, LabeledInstanceArray
from m3_ros.nodes import convert


def test_colour_encodings():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(convert.rgb_from_image(convert.array_to_image(rgb, "rgb8")), rgb)
    assert np.array_equal(convert.rgb_from_image(convert.array_to_image(rgb[..., ::-1], "bgr8")), rgb)
    with pytest.raises(ValueError, match="colour image must be"):
        convert.rgb_from_image(convert.array_to_image(rgb[..., 0], "mono8"))


def test_depth_encodings_and_invalid_values():
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    d = convert.depth_from_image(convert.array_to_image(mm, "16UC1"))
    assert d.dtype == np.float32 and np.allclose(d, mm * 1e-3)
    m = np.array([[np.nan, -1.0], [np.inf, 1.5]], np.float32)
    assert np.array_equal(convert.depth_from_image(convert.array_to_image(m, "32FC1")), [[0, 0], [0, 1.5]])


def test_padded_rows_and_big_endian():
    img = convert.array_to_image(np.arange(12, dtype=np.uint16).reshape(3, 4), "16UC1")
    padded = Image(height=3, width=4, encoding="16UC1", is_bigendian=1, step=10)
    be = np.arange(12, dtype=">u2").reshape(3, 4)
    padded.data = b"".join(be[r].tobytes() + b"\x00\x00" for r in range(3))
    assert np.array_equal(convert.image_to_array(padded), convert.image_to_array(img))


def test_malformed_images_are_refused():
    with pytest.raises(ValueError, match="unsupported image encoding"):
        convert.image_to_array(Image(height=1, width=1, encoding="yuv422", step=2, data=b"\x00\x00"))
    with pytest.raises(ValueError, match="needs step"):
        convert.image_to_array(Image(height=2, width=2, encoding="rgb8", step=6, data=b"\x00" * 5))
    with pytest.raises(ValueError, match="empty image"):
        convert.image_to_array(Image(height=0, width=0, encoding="rgb8"))


def test_camera_info_and_instances():
    with pytest.raises(ValueError, match="K is missing"):
        convert.intrinsics_from_camera_info(CameraInfo())
    info = CameraInfo(k=[100.0, 0, 10, 0, 100.0, 8, 0, 0, 1])
    assert convert.intrinsics_from_camera_info(info)[0, 2] == 10
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 2:4] = 255
    msg = LabeledInstanceArray(header=Header(), instances=[
        LabeledInstance(id=3, label="a yellow rubber duck toy", score=0.9, mask=convert.array_to_image(mask, "mono8"))])
    inst = convert.instances_from_msg(msg, (4, 5))
    assert inst[0].label == "a yellow rubber duck toy" and inst[0].mask.sum() == 4 and inst[0].id == 3
    with pytest.raises(ValueError, match="mask is"):
        convert.instances_from_msg(msg, (8, 10))


def test_point_cloud_round_trip():
    pts = np.random.default_rng(1).normal(size=(50, 3))
    msg = convert.points_to_cloud(pts, Header(frame_id="odom"), rgb=np.full((50, 3), 0.5))
    assert np.allclose(convert.cloud_to_points(msg), pts, atol=1e-6)
    assert msg.point_step == 16 and msg.width == 50
