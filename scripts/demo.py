"""The main demo (the README's first command): see m3_ros/nodes/demo.py."""
import sys

from m3_ros.nodes.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
