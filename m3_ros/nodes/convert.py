"""Messages <-> plain arrays. Every malformed input raises ValueError with a clear reason."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from m3_ros.geometry import matrix_to_pose, pose_to_matrix
from m3_ros.types import Instance

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1,
             "32FC1": 1, "16UC1": 1, "mono16": 1, "32SC1": 1}
_DTYPES = {"rgb8": np.uint8, "bgr8": np.uint8, "rgba8": np.uint8, "bgra8": np.uint8,
           "mono8": np.uint8, "8UC1": np.uint8, "32FC1": np.float32, "16UC1": np.uint16,
           "mono16": np.uint16, "32SC1": np.int32}


def stamp_to_sec(stamp: Time) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def sec_to_stamp(t: float) -> Time:
    sec = int(np.floor(t))
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def image_to_array(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> [H, W] or [H, W, C] array (a copy), honouring step and endianness."""
    enc = msg.encoding
    if enc not in _CHANNELS:
        raise ValueError(f"unsupported image encoding '{enc}' (supported: {sorted(_CHANNELS)})")
    if msg.height == 0 or msg.width == 0:
        raise ValueError(f"empty image {msg.width}x{msg.height}")
    dtype = np.dtype(_DTYPES[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    ch = _CHANNELS[enc]
    row_bytes = msg.width * ch * dtype.itemsize
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image {msg.width}x{msg.height} '{enc}' has step {msg.step} and "
                         f"{len(msg.data)} bytes; needs step >= {row_bytes} and {row_bytes * msg.height} bytes")
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8, count=msg.step * msg.height)
    rows = buf.reshape(msg.height, msg.step)[:, :row_bytes]
    arr = np.ascontiguousarray(rows).view(dtype).reshape(msg.height, msg.width, ch)
    arr = arr.astype(dtype.newbyteorder("="))
    return arr[..., 0] if ch == 1 else arr


def rgb_from_image(msg: Image) -> np.ndarray:
    """Colour image -> [H, W, 3] uint8 RGB."""
    arr = image_to_array(msg)
    if msg.encoding in ("rgb8", "rgba8"):
        return np.ascontiguousarray(arr[..., :3])
    if msg.encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[..., 2::-1])
    raise ValueError(f"colour image must be rgb8/bgr8/rgba8/bgra8, got '{msg.encoding}'")


def depth_from_image(msg: Image) -> np.ndarray:
    """Depth image (32FC1 metres or 16UC1 millimetres) -> [H, W] float32 metres, 0 = no return."""
    arr = image_to_array(msg)
    if msg.encoding == "32FC1":
        d = arr.astype(np.float32)
    elif msg.encoding in ("16UC1", "mono16"):
        d = arr.astype(np.float32) * 1e-3
    else:
        raise ValueError(f"depth image must be 32FC1 (m) or 16UC1 (mm), got '{msg.encoding}'")
    d[~np.isfinite(d) | (d < 0)] = 0.0
    return d


def array_to_image(arr: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """[H, W] / [H, W, C] array -> sensor_msgs/Image with the given encoding."""
    if encoding not in _CHANNELS:
        raise ValueError(f"unsupported image encoding '{encoding}'")
    arr = np.ascontiguousarray(arr, dtype=_DTYPES[encoding])
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * _CHANNELS[encoding] * arr.dtype.itemsize
    msg.data = arr.tobytes()
    return msg


def intrinsics_from_camera_info(msg: CameraInfo) -> np.ndarray:
    """CameraInfo -> K [3, 3]; ValueError when K is unset or not finite."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"camera_info K is missing or invalid: {K.ravel().tolist()}")
    return K


def pose_msg_to_matrix(pose: Pose) -> np.ndarray:
    p, q = pose.position, pose.orientation
    return pose_to_matrix([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def transform_msg_to_matrix(tf: Transform) -> np.ndarray:
    t, q = tf.translation, tf.rotation
    return pose_to_matrix([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


def matrix_to_pose_msg(T: np.ndarray) -> Pose:
    t, q = matrix_to_pose(T)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in t)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def instances_from_msg(msg, image_size: tuple[int, int]) -> list[Instance]:
    """m3_ros/LabeledInstanceArray -> Instances; masks must match the colour image size (H, W)."""
    out = []
    for inst in msg.instances:
        mask = image_to_array(inst.mask)
        if mask.ndim != 2 or mask.shape != tuple(image_size):
            raise ValueError(f"instance {inst.id} ('{inst.label}') mask is {mask.shape}, "
                             f"colour image is {tuple(image_size)}")
        if not inst.label.strip():
            raise ValueError(f"instance {inst.id} has an empty label")
        out.append(Instance(mask=mask > 0, label=inst.label, score=float(inst.score), id=int(inst.id)))
    return out


def points_to_cloud(points: np.ndarray, header: Header, rgb: np.ndarray | None = None) -> PointCloud2:
    """points [N, 3] (+ optional rgb [N, 3] in 0..1) -> PointCloud2 (x, y, z float32, rgb packed float)."""
    n = int(points.shape[0])
    fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate("xyz")]
    cols = [np.asarray(points, dtype=np.float32)]
    if rgb is not None:
        c8 = np.clip(np.asarray(rgb) * 255.0, 0, 255).astype(np.uint32)
        packed = ((c8[:, 0] << 16) | (c8[:, 1] << 8) | c8[:, 2]).view(np.float32)[:, None]
        fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
        cols.append(packed)
    data = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float32)
    msg = PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=False,
                      point_step=4 * data.shape[1], row_step=4 * data.shape[1] * n, is_dense=True)
    msg.data = data.tobytes()
    return msg


def cloud_to_points(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 with float32 x, y, z fields -> points [N, 3]."""
    offs = {f.name: f.offset for f in msg.fields if f.datatype == PointField.FLOAT32}
    if not all(c in offs for c in "xyz"):
        raise ValueError(f"point cloud lacks float32 x/y/z fields: {[f.name for f in msg.fields]}")
    n = msg.width * msg.height
    if msg.point_step == 0 or len(msg.data) < n * msg.point_step:
        raise ValueError("point cloud data is shorter than width*height*point_step")
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8, count=n * msg.point_step).reshape(n, msg.point_step)
    cols = [raw[:, offs[c]:offs[c] + 4].copy().view(np.float32)[:, 0] for c in "xyz"]
    return np.stack(cols, axis=1).astype(np.float64)
