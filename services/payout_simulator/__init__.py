"""The payout gateway simulator: clearhouse.payout.v1 in memory, steered by tests."""
