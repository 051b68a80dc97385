"""The Kedro pipelines: each node is one library call on its `params:` sections."""
