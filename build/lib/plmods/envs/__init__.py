from plmods.envs.control import ControlEnv, check_env_id

__all__ = ["ControlEnv", "check_env_id"]
