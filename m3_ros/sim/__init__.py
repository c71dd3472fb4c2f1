"""m3_ros.sim"""
