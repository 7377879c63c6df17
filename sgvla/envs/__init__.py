"""Simulated scenes. Importing this package registers the built-in `mini_kitchen` envs with ManiSkill."""
