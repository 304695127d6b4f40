"""A scripted mining world for testing the pipeline against known truth.

``scenario`` parses a YAML scenario (regions, pools, machines, shocks); ``model`` turns it into
share batches, blocks and prices plus the ground truth behind them; ``run`` sends them to Kafka
or a file; ``evaluate`` compares what the pipeline published with that truth.
"""
