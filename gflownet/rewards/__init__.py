"""Rewards shared by tasks: the base-LM likelihood term and the weighted sum that composes rewards."""
