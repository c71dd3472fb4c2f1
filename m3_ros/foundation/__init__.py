"""m3_ros.foundation"""
