"""The member trainer: timm models trained fold by fold (SPEC §2)."""
