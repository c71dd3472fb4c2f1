"""m3_ros.grasp"""
