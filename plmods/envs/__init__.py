from plmods.envs.control import ControlEnv, check_env_id
from plmods.envs.text import AdditionTask, CountdownTask, TextTask

__all__ = ["AdditionTask", "ControlEnv", "CountdownTask", "TextTask", "check_env_id"]
