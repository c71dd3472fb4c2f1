"""memory_node's parameters: every name with its default (config/m3.yaml overrides), descriptions,
ranges, which may change live, and the config fields the live ones set."""
from __future__ import annotations

from m3_ros.nodes.common import Param
from m3_ros.tracking import OdometryPrior

# One place for every parameter and its default (config/m3.yaml overrides).
PARAMS: dict[str, object] = {
    "color_topic": "camera/color/image_raw",
    "depth_topic": "camera/depth/image_raw",
    "camera_info_topic": "camera/color/camera_info",
    "odom_topic": "odom",
    "instances_topic": "camera/instances",
    "mount_topic": "camera/mount",
    "camera_mount": [0.0],  # [x, y, z, qx, qy, qz, qw] base_link -> camera optical; [0.0] = take it from mount_topic
    "odom_frame": "odom",
    "map_frame": "map",
    "refine_poses": True,
    "odom_drift_frac": 0.02,  # the odometry's translation drift per metre (ICP's prior; 0 = no prior)
    "odom_yaw_deg_per_sqrt_m": 1.0,  # the odometry's yaw random walk, degrees after 1 m
    "base_frame": "base_link",
    "camera_frame": "",  # "" = the colour image's header.frame_id
    "tf_cache_s": 10.0,
    "pose_wait": 0.5,
    "tf_max_gap_s": 0.5,
    "reliable_sensors": False,
    "sync_slop": 0.05,
    "instances_slop": 0.02,
    "instances_wait": 1.0,
    "models": ["clip", "dinov2_s", "minilm_labels"],
    "clip_arch": "ViT-B-16",
    "clip_checkpoint": "",
    "siglip_path": "",
    "channels": [16, 16, 16],
    "thetas": [0.80, 0.75, 1.0],
    "kf_min_translation": 0.10,
    "kf_min_rotation_deg": 10.0,
    "kf_min_interval": 0.3,
    "kf_max_interval": 5.0,
    "training": True,
    "train_period": 0.05,
    "train_budget": 0.04,
    "status_period": 1.0,
    "cloud_period": 2.0,
    "cloud_min_opacity": 0.3,
    "memory_dir": "",
    "grounding_mode": "gaussians",
    "grounding_score": "cosine",
    "grounding_row_margin": 0.03,
    "grounding_row_mass_min": 0.5,
    "grounding_views": 3,
    "grounding_view_scale": 0.5,
    "grounding_relative_margin": 0.1,
    "grounding_baseline_margin": 0.03,
    "grounding_min_opacity": 0.2,
    "grounding_cluster_radius": 0.03,
    "grounding_label_support": 0.3,
    "grounding_label_contradictions": 2,
    "grounding_support_prior": 0.1,
    "grounding_left_share": 0.2,
    "grounding_fallback_points": 1,
    "grounding_centre": "mid_range",
    "grounding_colour_contrast": "drop",
    "grounding_colour_margin": 0.02,
    "max_query_chars": 200,
    "publish_relevance": True,
    "query_outputs_period_s": 0.5,  # markers and relevance image: at most once per this, for the newest query
    "autosave_period_s": 0.0,  # s between autosaves of a changed memory (atomic); 0 = off
    "autosave_path": "",  # "" = memory_dir
    "max_future_stamp_s": 10.0,  # stamps further ahead of this node's clock are refused
}


# Descriptions, ranges and what may change live (`ros2 param set`); the defaults are PARAMS'.
# Parameters not listed here are fixed at start-up and have no range.
PARAM_SPECS: dict[str, Param] = {
    "camera_frame": Param("", "camera optical frame of the images ('' = their header.frame_id)"),
    "map_frame": Param("", "frame of the drift-corrected memory; map -> odom goes out on /tf (REP-105)"),
    "refine_poses": Param(True, "refine keyframe poses by depth-to-map ICP; the memory lives in map_frame "
                                "(false: in odom_frame, nothing on /tf)"),
    "odom_drift_frac": Param(0.0, "the odometry's translation drift per metre travelled: ICP's prior on each "
                                  "keyframe's correction (0 = no prior, ICP alone)", range=(0.0, 1.0)),
    "odom_yaw_deg_per_sqrt_m": Param(0.0, "the odometry's yaw random walk, degrees after one metre (ICP's prior)",
                                     range=(0.0, 90.0)),
    "tf_cache_s": Param(0.0, "s of /tf history kept", range=(0.5, 600.0)),
    "pose_wait": Param(0.0, "s a frame waits for its pose at the image stamp: until newer frames are this far "
                            "ahead in stamp time and this long has passed since it arrived", range=(0.0, 10.0),
                       live=True),
    "tf_max_gap_s": Param(0.0, "s, widest gap between odometry / TF samples a pose is interpolated across "
                               "(wider: the frame is dropped, its pose would be invented)", range=(0.01, 60.0),
                          live=True),
    "sync_slop": Param(0.0, "s, colour/depth approximate sync", range=(0.0, 1.0)),
    "instances_slop": Param(0.0, "s, labelled instances matched to the colour frame", range=(0.0, 1.0), live=True),
    "instances_wait": Param(0.0, "s a frame waits for its instances", range=(0.0, 10.0), live=True),
    "kf_min_translation": Param(0.0, "m the camera moves between keyframes", range=(0.0, 10.0), live=True),
    "kf_min_rotation_deg": Param(0.0, "degrees the camera turns between keyframes", range=(0.0, 180.0), live=True),
    "kf_min_interval": Param(0.0, "s between keyframes at the least", range=(0.0, 600.0), live=True),
    "kf_max_interval": Param(0.0, "s after which a keyframe is taken without motion", range=(0.01, 3600.0),
                             live=True),
    "training": Param(True, "train the memory (false: keyframes are still added, no train steps)", live=True),
    "train_period": Param(0.0, "s between train-timer ticks", range=(0.001, 10.0)),
    "train_budget": Param(0.0, "s of training per tick", range=(0.0, 10.0), live=True),
    "status_period": Param(0.0, "s between memory/status and /diagnostics", range=(0.05, 60.0)),
    "cloud_period": Param(0.0, "s between memory/gaussians clouds", range=(0.05, 600.0)),
    "cloud_min_opacity": Param(0.0, "Gaussians below this opacity are left out of the cloud", range=(0.0, 1.0),
                               live=True),
    "grounding_mode": Param("", "how relevance is read out of the memory", choices=("gaussians", "view", "render"),
                            live=True),
    "grounding_score": Param("", "cosine (decoded feature vs text) or row_mass (attention on the text's bank rows)",
                             choices=("row_mass", "cosine"), live=True),
    "grounding_row_margin": Param(0.0, "bank rows within this cosine of the best row are the text's rows",
                                  range=(0.0, 1.0), live=True),
    "grounding_row_mass_min": Param(0.0, "attention a Gaussian puts on the text's rows to be a candidate",
                                    range=(0.0, 1.0), live=True),
    "grounding_views": Param(0, "keyframe views rendered in render mode", range=(1, 64), live=True),
    "grounding_view_scale": Param(0.0, "render resolution (fraction of the keyframe's)", range=(0.05, 1.0),
                                  live=True),
    "grounding_relative_margin": Param(0.0, "candidates score within this of the best score", range=(0.0, 2.0),
                                       live=True),
    "grounding_baseline_margin": Param(0.0, "candidates beat a zero query's score by this much", range=(-1.0, 2.0),
                                       live=True),
    "grounding_min_opacity": Param(0.0, "Gaussians below this opacity are ignored in gaussians mode",
                                   range=(0.0, 1.0), live=True),
    "grounding_cluster_radius": Param(0.0, "m, points closer than this form one region", range=(0.001, 1.0),
                                      live=True),
    "grounding_label_support": Param(0.0, "label models: trust a Gaussian by its share of views inside a detector "
                                     "region over this (0 = off)", range=(0.0, 1.0), live=True),
    "grounding_label_contradictions": Param(0, "label models: no label support for a Gaussian whose label this many "
                                            "views in a row contradicted (a moved object's old place; 0 = off)",
                                            range=(0, 1000), live=True),
    "grounding_support_prior": Param(0.0, "label models: pseudo-votes on each side of a Gaussian's label support "
                                     "(smaller trusts its first few votes more)", range=(0.001, 100.0), live=True),
    "grounding_left_share": Param(0.0, "label models: a region is dropped when this share of its Gaussians were "
                                  "seen since with another label there (a moved object's old place; 0 = off)",
                                  range=(0.0, 1.0), live=True),
    "grounding_fallback_points": Param(0, "when no region of 5 points passes, the best region of at least this many "
                                       "answers (5 or more: the query is refused instead)", range=(1, 100000), live=True),
    "grounding_centre": Param("", "a region's answer point: above_support (mid_range, x and y above the support "
                              "plane), mid_range (middle of its points' 10-90 % extent), "
                              "median, or top_half (median of its better-scoring half)",
                              choices=("above_support", "mid_range", "median", "top_half"), live=True),
    "grounding_colour_contrast": Param("", "a query naming one colour: regions closer to it in another colour go last "
                                       "or are dropped (off | last | drop)", choices=("off", "last", "drop"),
                                       live=True),
    "grounding_colour_margin": Param(0.0, "how much closer (cosine) to another colour a region must be to count as it",
                                     range=(-1.0, 2.0), live=True),
    "max_query_chars": Param(0, "longer queries are rejected", range=(1, 100000), live=True),
    "publish_relevance": Param(True, "publish memory/relevance_image after each query", live=True),
    "query_outputs_period_s": Param(0.0, "s between two publications of markers and relevance image (the newest "
                                    "query's; older ones waiting are skipped)", range=(0.0, 60.0), live=True),
}
# ROS parameter -> GroundingConfig / KeyframeSelectorConfig field (changed live).
GROUNDING_FIELDS = {"grounding_mode": "mode", "grounding_score": "score", "grounding_row_margin": "row_margin",
                     "grounding_row_mass_min": "row_mass_min", "grounding_views": "n_views", "grounding_view_scale": "view_scale",
                     "grounding_relative_margin": "relative_margin", "grounding_baseline_margin": "baseline_margin",
                     "grounding_min_opacity": "min_opacity", "grounding_cluster_radius": "cluster_radius",
                     "grounding_label_support": "label_support",
                     "grounding_label_contradictions": "label_contradictions",
                     "grounding_support_prior": "support_prior", "grounding_left_share": "left_share",
                     "grounding_fallback_points": "fallback_points",
                     "grounding_centre": "centre", "grounding_colour_contrast": "colour_contrast",
                     "grounding_colour_margin": "colour_margin",
                     "max_query_chars": "max_query_chars"}
KEYFRAME_FIELDS = {"kf_min_translation": "min_translation", "kf_min_rotation_deg": "min_rotation_deg",
                    "kf_min_interval": "min_interval", "kf_max_interval": "max_interval"}


def odometry_prior(p: dict) -> OdometryPrior | None:
    """ICP's odometry prior from the node's parameters (the odometry's specification); None when
    odom_drift_frac is 0 (ICP alone)."""
    if float(p["odom_drift_frac"]) <= 0:
        return None
    return OdometryPrior(trans_frac=float(p["odom_drift_frac"]), yaw_deg_per_sqrt_m=float(p["odom_yaw_deg_per_sqrt_m"]))
