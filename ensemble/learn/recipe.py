"""Kept for old imports: recipes, their options and the retrain command live in :mod:`ensemble.recipe`."""

from ..recipe import (
    DEFAULT_RECIPE,
    OPTIONS,
    RECIPE_HELP,
    RECIPE_KEYS,
    RECIPES,
    TrainConfig,
    build_recipe,
    compose_config,
    parse_sets,
    read_config,
    train_command,
    weight_source,
)

__all__ = [
    "DEFAULT_RECIPE",
    "OPTIONS",
    "RECIPES",
    "RECIPE_HELP",
    "RECIPE_KEYS",
    "TrainConfig",
    "build_recipe",
    "compose_config",
    "parse_sets",
    "read_config",
    "train_command",
    "weight_source",
]
