"""pip path for m3_ros (the ROS path is CMakeLists.txt; scripts/setup.sh drives both)."""
from setuptools import setup

NODES = ["memory_node", "grasp_planner_node", "sim_node"]

setup(
    name="m3_ros",
    version="0.1.0",
    packages=[
        "m3_ros", "m3_ros.memory", "m3_ros.foundation", "m3_ros.grounding",
        "m3_ros.grasp", "m3_ros.nodes", "m3_ros.sim", "m3_ros.cli",
    ],
    package_data={"m3_ros.memory": ["csrc/*.cpp"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/m3_ros"]),
        ("share/m3_ros", ["package.xml"]),
    ],
    install_requires=["numpy", "scipy", "pyyaml", "torch", "safetensors"],
    entry_points={
        "console_scripts": [f"{n} = m3_ros.nodes.{n}:main" for n in NODES] + ["m3-ros = m3_ros.cli.main:main"],
    },
    python_requires=">=3.10",
)
