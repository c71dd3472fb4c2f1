"""m3_ros.grounding"""
