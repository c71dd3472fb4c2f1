"""m3_ros.memory"""
