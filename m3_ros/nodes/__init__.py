"""m3_ros.nodes"""
