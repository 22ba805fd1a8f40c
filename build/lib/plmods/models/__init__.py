from plmods.models.control import MLPActorCritic

__all__ = ["MLPActorCritic"]
