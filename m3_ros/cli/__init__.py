"""The ``m3-ros`` command line: offline recording, building, querying and inspecting of memories."""
