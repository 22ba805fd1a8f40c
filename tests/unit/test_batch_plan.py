"""The batch-size planner: the arithmetic of one iteration, per rank and over all ranks."""

from plmods.algos import ControlModule
from plmods.algos.batch_plan import BatchPlan
from plmods.envs import ControlEnv


def test_control_plan_per_rank_and_total():
    module = ControlModule.ppo(ControlEnv("CartPole-v1", num_envs=4), frames_per_batch=64, minibatch_size=16,
                               epochs=3, total_frames=1000)  # fmt: skip
    assert module.batch_plan(world_size=2).as_dict() == {
        "envs": ["4", "8"],
        "frames": ["64", "128"],
        "frames per optimizer step": ["16", "32"],
        "optimizer steps (epochs x minibatches)": ["12", "12"],
        "gradient accumulation": ["1", "1"],
        "iterations in the frame budget": ["8", "8"],  # ceil(1000 / 128)
    }
    assert module.batch_plan().as_dict()["iterations in the frame budget"] == ["16", "16"]


def test_table_lines_up_columns():
    plan = BatchPlan(world_size=2)
    plan.add("frames", 1024)
    plan.add("steps", 4, summed=False)
    assert plan.table().splitlines() == [
        "batch plan (one iteration):",
        "quantity  per rank  2 ranks",
        "---------------------------",
        "frames       1,024    2,048",
        "steps            4        4",
    ]
