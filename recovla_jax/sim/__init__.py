"""MJX simulation: environment base on brax's Env API, gripper control, domain randomization."""
