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


def test_distorted_camera_info_and_size_mismatch_are_refused():
    K = [100.0, 0, 10, 0, 100.0, 8, 0, 0, 1]
    assert convert.intrinsics_from_camera_info(CameraInfo(k=K, d=[0.0] * 5, distortion_model="plumb_bob"))[0, 0] == 100
    with pytest.raises(ValueError, match=r"camera_info distortion: distorted images are not supported .*plumb_bob.*image_rect"):
        convert.intrinsics_from_camera_info(CameraInfo(k=K, d=[0.1, 0, 0, 0, 0], distortion_model="plumb_bob"))
    with pytest.raises(ValueError, match="distorted"):
        convert.intrinsics_from_camera_info(CameraInfo(k=K, d=[float("nan")] * 5))
    convert.check_camera_info_size(CameraInfo(width=20, height=16), (16, 20))
    convert.check_camera_info_size(CameraInfo(), (16, 20))  # unset size: nothing to compare
    with pytest.raises(ValueError, match="camera_info size: camera_info is 640x480 but the colour image is 20x16"):
        convert.check_camera_info_size(CameraInfo(width=640, height=480), (16, 20))


def test_depth_without_any_valid_pixel_is_refused():
    for bad in (np.zeros((3, 4), np.float32), np.full((3, 4), np.nan, np.float32),
                np.full((3, 4), np.inf, np.float32), np.full((3, 4), -1.0, np.float32)):
        with pytest.raises(ValueError, match=r"depth: no valid pixel .*all zero, NaN or inf"):
            convert.depth_from_image(convert.array_to_image(bad, "32FC1"))
    with pytest.raises(ValueError, match="depth: no valid pixel"):
        convert.depth_from_image(convert.array_to_image(np.zeros((3, 4), np.uint16), "16UC1"))


def test_quaternions_must_be_finite_and_unit():
    from geometry_msgs.msg import Pose, Transform
    pose = Pose()
    pose.orientation.w = 1.0
    assert np.allclose(convert.pose_msg_to_matrix(pose), np.eye(4))
    pose.orientation.w = 1.004  # a driver's rounding: normalised, not refused
    assert np.allclose(convert.pose_msg_to_matrix(pose), np.eye(4))
    pose.orientation.w = 2.0
    with pytest.raises(ValueError, match=r"quaternion: odometry orientation .* is not a unit quaternion \(norm 2\)"):
        convert.pose_msg_to_matrix(pose)
    pose.orientation.w = float("nan")
    with pytest.raises(ValueError, match="quaternion: odometry orientation has non-finite values"):
        convert.pose_msg_to_matrix(pose)
    tf = Transform()
    tf.rotation.w = 1.0
    tf.translation.x = float("inf")
    with pytest.raises(ValueError, match="pose: camera mount position has non-finite values"):
        convert.transform_msg_to_matrix(tf, "camera mount")


def test_stamps_out_of_order_in_the_future_and_jumping_back():
    s = convert.StampChecks(max_future_s=10.0, jump_back_s=5.0)
    s.check("color", 100.0, now=100.0)
    s.check("color", 100.0, now=100.0)  # a repeated stamp is not out of order
    s.check("depth", 99.0, now=100.0)  # streams are independent
    with pytest.raises(ValueError, match=r"stamp: color stamp 99\.000 is older than the previous one .*out of order"):
        s.check("color", 99.0, now=100.0)
    with pytest.raises(ValueError, match=r"stamp: color stamp 200\.000 is 100\.0 s ahead"):
        s.check("color", 200.0, now=100.0)
    s.check("color", 200.0, now=None)  # no clock (simulated time not started): only the order is checked
    s.check("color", 1.0, now=None)  # 199 s back: a restarted stream starts over
    assert s.jumped and s.last["color"] == 1.0
    s.check("color", 1.1, now=None)
    assert not s.jumped
    with pytest.raises(ValueError, match="not finite"):
        s.check("odom", float("nan"), now=None)


def test_readers_need_no_ros_package():
    """convert.py's readers import no ROS module (the offline tools use them on rosbags' messages)."""
    import subprocess
    import sys
    code = ("import sys\n"
            "class B:\n"
            "    def find_spec(self, n, p=None, t=None):\n"
            "        if n.split('.')[0] in {'rclpy', 'sensor_msgs', 'geometry_msgs', 'std_msgs', 'builtin_interfaces'}:\n"
            "            raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            "from m3_ros.nodes import convert\n"
            "print(convert.stamp_to_sec(type('T', (), {'sec': 3, 'nanosec': 5e8})()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "3.5", out.stderr
