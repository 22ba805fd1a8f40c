"""The bad-input table: every entry ends ``train.py`` with exit code 2 and ONE line naming the
setting, before any work starts, and leaves the previous run's files byte-identical.

Two real runs (PPO ``debug=fast``, GRPO ``debug=fast_lm``) write checkpoints first; every bad
command line then points at the same run directory (``hydra.run.dir``), most at its checkpoint
too. The entries run in one process (``tests/bad_input_runner.py``); a few also run as
``python train.py`` subprocesses (``test_bad_input.py``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PPO = ["debug=fast", "logger=none"]
SMALL_LM = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64"]
GRPO = ["experiment=grpo_addition", "debug=fast_lm", "logger=none", *SMALL_LM]
REINFORCE_LM = ["experiment=reinforce_addition", "debug=fast_lm", "logger=none", *SMALL_LM]
PPO_LM = ["experiment=ppo_addition", "debug=fast_lm", "logger=none", *SMALL_LM]

# (base, overrides, fragment of the one line after "plmods: invalid setting: ")
TABLE: list[tuple[list[str], list[str], str]] = [
    # wrong types: a string, float, list or mapping where another type goes
    (PPO, ["algo.lr=abc"], "algo.lr='abc' must be a number"),
    (PPO, ["algo.lr=[0.1]"], "algo.lr=[0.1] must be a number"),
    (PPO, ["algo.lr=null"], "algo.lr=None must be a number"),
    (PPO, ["algo.epochs=2.5"], "algo.epochs=2.5 must be an integer"),
    (PPO, ["algo.epochs=ten"], "algo.epochs='ten' must be an integer"),
    (PPO, ["algo.anneal_lr=1"], "algo.anneal_lr=1 must be true or false"),
    (PPO, ["algo.anneal_lr=maybe"], "algo.anneal_lr='maybe' must be true or false"),
    (PPO, ["algo.minibatch_size=all"], "algo.minibatch_size='all' must be an integer or null"),
    (PPO, ["algo.target_kl=low"], "algo.target_kl='low' must be a number or null"),
    (PPO, ["algo.frames_per_batch={a: 1}"], "algo.frames_per_batch={'a': 1} must be an integer"),
    (PPO, ["env.num_envs=[1,2]"], "env.num_envs=[1, 2] must be an integer"),
    (PPO, ["env.obs_norm=yes"], "env.obs_norm='yes' must be true or false"),
    (PPO, ["env.max_episode_steps=1.5"], "env.max_episode_steps=1.5 must be an integer or null"),
    (PPO, ["env.env_id=5"], "env.env_id=5 must be a string"),
    (PPO, ["model.hidden_sizes=abc"], "model.hidden_sizes='abc' must be a list of integers"),
    (PPO, ["model.hidden_sizes=[a,b]"], "model.hidden_sizes=['a', 'b'] must be a list of integers"),
    (PPO, ["model.orthogonal_init=0"], "model.orthogonal_init=0 must be true or false"),
    (PPO, ["algo.loss.clip_epsilon=wide"], "algo.loss.clip_epsilon='wide' must be"),
    (PPO, ["algo.loss=[1]"], "algo.loss=[1]: a list cannot replace a mapping here"),
    (PPO, ["algo.advantage.lmbda=high"], "algo.advantage.lmbda='high' must be"),
    (PPO, ["seed=abc"], "seed='abc' must be an integer"),
    (PPO, ["seed=1.5"], "seed=1.5 must be an integer"),
    (PPO, ["tags=5"], "tags=5 must be a list of strings"),
    (PPO, ["trainer.max_epochs=abc"], "trainer.max_epochs='abc' must be an integer or null"),
    (PPO, ["trainer.check_val_every_n_epoch=often"], "trainer.check_val_every_n_epoch='often' must be an integer or null"),
    (PPO, ["callbacks.progress_bar=3"], "callbacks.progress_bar=3 must be a mapping with _target_"),
    (PPO, ["callbacks.early_stopping.patience=abc"], "callbacks.early_stopping.patience='abc' must be an integer"),
    (PPO, ["logger=wandb", "logger.wandb.mode=bogus"], "logger.wandb.mode='bogus' must be one of 'auto', 'online', 'offline', 'disabled'"),
    (PPO, ["logger=wandb", "logger.wandb.mode=3"], "logger.wandb.mode=3 must be one of"),
    (PPO, ["logger=csv", "logger.csv.flush_logs_every_n_steps=10"], "logger.csv.flush_logs_every_n_steps is not in the config: CSVLogger takes it, add it with +logger.csv.flush_logs_every_n_steps=..."),
    (PPO, ["logger=csv", "+logger.csv.flush_logs_every_n_steps=abc"], "logger.csv.flush_logs_every_n_steps='abc' must be an integer"),
    # unknown keys, groups, options; Hydra syntax
    (PPO, ["algo.lrr=1"], "algo.lrr is not a setting of ControlModule (algo); its settings: adam_eps"),
    (PPO, ["+algo.lrr=1"], "algo.lrr is not a setting of ControlModule; its settings: adam_eps"),
    (PPO, ["+env.bogus=1"], "env.bogus is not a setting of ControlEnv"),
    (PPO, ["+algo.loss.clip_epsylon=0.1"], "algo.loss.clip_epsylon is not a setting of K3ClipPPOLoss"),
    (PPO, ["algo=bogus"], "algo=bogus is not an option of the algo group; options: grpo, ppo, ppo_kl, ppo_lm, reinforce, reinforce_lm."),
    (PPO, ["env=cartpol"], "env=cartpol is not an option of the env group; options: acrobot, addition, cartpole, countdown, pendulum."),
    (PPO, ["experiment=bogus"], "experiment=bogus is not an option of the experiment group"),
    (PPO, ["seed=0,1"], "Ambiguous value for argument 'seed=0,1'"),
    (PPO, ["-m", "seed=0,abc"], "seed='abc' must be an integer"),
    (PPO, ["algo.lr=${nope}"], "algo.lr cannot be resolved: Interpolation key 'nope' not found"),
    (PPO, ["algo.lr=1e-3)"], "algo.lr=1e-3)"),
    # values out of range, combinations (the constructors' checks, in config paths)
    (PPO, ["algo.lr=0"], "algo.lr must be > 0"),
    (PPO, ["algo.lr=-0.1"], "algo.lr must be > 0"),
    (PPO, ["algo.epochs=0"], "algo.epochs must be >= 1, got 0"),
    (PPO, ["algo.frames_per_batch=0"], "algo.frames_per_batch"),
    (PPO, ["algo.minibatch_size=48"], "algo.minibatch_size=48 must be a positive divisor of algo.frames_per_batch=256"),
    (PPO, ["algo.loss.clip_epsilon=0"], "algo.loss.clip_epsilon must be in (0, 1), got 0"),
    (PPO, ["algo.advantage.gamma=1.5"], "algo.advantage.gamma must be in (0, 1], got 1.5"),
    (PPO, ["algo=reinforce", "algo.episodes_per_batch=6"], "algo.episodes_per_batch=6 must be a positive multiple of env.num_envs=4"),
    (PPO, ["algo=reinforce", "algo.advantage.baseline=mean"], "algo.advantage.baseline must be one of"),
    (PPO, ["algo=reinforce", "algo.target_kl=0.01"], "algo.target_kl works only with K3ClipPPOLoss or K3KLPENPPOLoss"),
    (PPO, ["env.env_id=CartPol-v1"], "env.env_id='CartPol-v1' is not a registered gymnasium environment"),
    (PPO, ["env.num_envs=0"], "env.num_envs"),
    (PPO, ["env.workers=0"], "env.workers"),
    (PPO, ["env.backend=threads"], "env.backend"),
    (PPO, ["env.workers=2", "env.obs_norm=true"], "env.obs_norm"),
    (PPO, ["model.activation=sigmoidal"], "model.activation"),
    (PPO, ["callbacks=[default,adaptive_kl]", "callbacks.adaptive_kl.target_kl=0"], "callbacks.adaptive_kl.target_kl must be > 0"),
    (PPO, ["callbacks=[default,adaptive_kl]", "callbacks.adaptive_kl.rule=pid"], "callbacks.adaptive_kl.rule='pid' must be one of 'ppo', 'proportional'"),
    (PPO, ["callbacks=[default,episode_video]", "callbacks.episode_video.every_n_evals=0"], "callbacks.episode_video.every_n_evals=0 must be an integer >= 1"),
    (PPO, ["num_threads=0"], "num_threads=0 must be an integer >= 1"),
    (PPO, ["num_threads=-1"], "num_threads=-1 must be an integer >= 1"),
    (PPO, ["num_threads=two"], "num_threads='two' must be an integer or null"),
    (PPO, ["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 must be an integer >= 1"),
    (PPO, ["monitor=val/accuracy"], "monitor=val/accuracy is not logged by ControlModule"),
    (PPO, ["hydra.run.dir=/proc/plmods-run"], "output_dir='/proc/plmods-run' cannot be written"),
    # checkpoints: missing, corrupt, truncated, foreign, other algorithm / env / network
    (PPO, ["ckpt_path=/no/such/last.ckpt"], "ckpt_path='/no/such/last.ckpt' does not exist"),
    (PPO, ["ckpt_path={garbage}"], "is not a readable checkpoint: corrupt or truncated"),
    (PPO, ["ckpt_path={truncated}"], "is not a readable checkpoint: corrupt or truncated"),
    (PPO, ["ckpt_path={text}"], "is not a readable checkpoint"),
    (PPO, ["ckpt_path={foreign}"], "was not written by plmods (no plmods section)"),
    (PPO, ["ckpt_path={pickled}"], "holds objects other than tensors and plain data"),
    (PPO, ["ckpt_path={grpo_ckpt}"], "ckpt_path was written by a run with algorithm GRPO, but this run's algorithm is PPO"),
    (PPO, ["algo=reinforce", "ckpt_path={ppo_ckpt}"], "algorithm PPO, but this run's algorithm is REINFORCE"),
    (PPO, ["env=acrobot", "ckpt_path={ppo_ckpt}"], "ckpt_path was written by a run with env CartPole-v1, but this run's env is Acrobot-v1"),
    (PPO, ["model.hidden_sizes=[32]", "ckpt_path={ppo_ckpt}"], "ckpt_path holds a different network"),
    (PPO, ["model.hidden_sizes=[64,32]", "ckpt_path={ppo_ckpt}"], "ckpt_path holds loss_module.actor_network_params.module.0.module.2.weight of shape [64, 64], this run's is [32, 64]"),
    (GRPO, ["ckpt_path={ppo_ckpt}"], "ckpt_path was written by a run with algorithm PPO, but this run's algorithm is GRPO"),
    (GRPO, ["env=countdown", "ckpt_path={grpo_ckpt}"], "env"),
    # language models
    (GRPO, ["algo.group_size=abc"], "algo.group_size='abc' must be an integer"),
    (GRPO, ["algo.group_size=1"], "algo.group_size must be >= 2"),
    (GRPO, ["algo.rewards=[1,2]"], "algo.rewards=[1,2]: a list cannot replace a mapping here"),
    (GRPO, ["algo.minibatch_size=7"], "algo.minibatch_size=7 must divide the completions of a round"),
    (GRPO, ["algo.loss.aggregation=bogus"], "algo.loss.aggregation must be one of token_mean, sequence_mean"),
    (GRPO, ["algo.eval_problems=100000"], "algo.eval_problems=100000 is more than the task can hold out"),
    (GRPO, ["algo.temperature=hot"], "algo.temperature='hot' must be a number"),
    (GRPO, ["env.digits=0"], "env.digits must be in 1..9, got 0"),
    (GRPO, ["model.lora=[1]"], "model.lora=[1]: a list cannot replace a mapping here"),
    (GRPO, ["model.hidden_size=big"], "model.hidden_size='big' must be an integer"),
    (GRPO, ["callbacks.sft_warmup.steps=abc"], "callbacks.sft_warmup.steps='abc' must be an integer"),
    (GRPO, ["monitor=val/episode_return"], "monitor=val/episode_return is not logged by LMModule"),
    (["experiment=grpo_addition", "logger=none"], ["model=hf_causal_lm"], "model.path has no default and must be set (model.path=...)."),
    (["experiment=grpo_addition", "logger=none"], ["model=hf_causal_lm", "model.path={empty_dir}"], "holds no config.json"),
    (["experiment=grpo_addition", "logger=none"], ["model=hf_causal_lm", "model.path=/no/such/model"], "model.path='/no/such/model' is not a local directory"),
    (GRPO, ["debug=fast"], "algo.frames_per_batch is not a setting of LMModule"),
    (GRPO, ["model.lora.r=-1"], "model.lora.r must be >= 0 (0: no LoRA), got -1"),
    (GRPO, ["model.lora.rank=4"], "model.lora.rank is not a setting"),
    (GRPO, ["model.chat_template=false", "model.system_prompt=hi"], "model.system_prompt needs model.chat_template=true"),
    (GRPO, ["env.prompt_template=sum"], "env.prompt_template must contain {a} and {b}, got 'sum'"),
    (GRPO, ["algo.micro_batch_size=0"], "algo.micro_batch_size must be >= 1 or null, got 0"),
    (["algo=grpo", "logger=none"], ["monitor=val/accuracy"], "GRPO on a language model needs a text task (env=addition or env=countdown)"),
    (["algo=ppo_lm", "logger=none"], ["monitor=val/accuracy"], "PPO on a language model needs a text task (env=addition or env=countdown)"),
    # the language algorithms' parts: loss, advantage, critic, loop
    (GRPO, ["algo.epochs=0"], "algo.epochs must be >= 1, got 0"),
    (GRPO, ["algo.micro_batch_tokens=0"], "algo.micro_batch_tokens must be >= 1, got 0"),
    (GRPO, ["algo.logits_chunk_size=0"], "algo.logits_chunk_size must be >= 1, got 0"),
    (GRPO, ["algo.loss.kl_penalty=both"], "algo.loss.kl_penalty='both' must be one of 'loss', 'reward'"),
    (GRPO, ["algo.loss.kl_coef=-0.1"], "algo.loss.kl_coef must be >= 0, got -0.1"),
    (GRPO, ["algo.loss.clip_epsilon=1.5"], "algo.loss.clip_epsilon must be in (0, 1), got 1.5"),
    (GRPO, ["algo/advantage=bogus"], "algo/advantage=bogus is not an option of the algo/advantage group; options: gae"),
    (GRPO, ["+algo/critic=value_head"], "algo.loss MaskedGRPOLoss has no critic: set algo.critic to null"),
    (GRPO, ["algo/advantage=token_gae"], "algo.advantage TokenGAE needs a critic's values: set algo.critic"),
    (REINFORCE_LM, ["algo.advantage.baseline=mean"], "algo.advantage.baseline must be one of none, moving_average, leave_one_out, got 'mean'"),
    (REINFORCE_LM, ["algo.advantage.gamma=0"], "algo.advantage.gamma must be in (0, 1], got 0"),
    (REINFORCE_LM, ["algo.advantage.baseline_decay=1"], "algo.advantage.baseline_decay must be in [0, 1), got 1"),
    (PPO_LM, ["algo.critic=null"], "algo.loss MaskedPPOLoss needs a critic: set algo.critic"),
    (PPO_LM, ["algo.loss.critic_coeff=-1"], "algo.loss.critic_coeff must be >= 0, got -1"),
    (PPO_LM, ["algo.loss.clip_value=0"], "algo.loss.clip_value must be > 0 or null, got 0"),
    (PPO_LM, ["algo.advantage.lmbda=2"], "algo.advantage.lmbda must be in [0, 1], got 2"),
    (PPO_LM, ["algo/critic=critic_model", "algo.critic.path=/no/such/critic"], "algo.critic.path='/no/such/critic' is not a saved transformers model"),
    (PPO_LM, ["algo.critic.path={empty_dir}"], "algo.critic.path='{empty_dir}' holds no value_head.safetensors"),
    (PPO, ["algo=reinforce", "env.workers=2"], "env.workers=2 needs fixed-size batches"),
    (GRPO, ["algo.rewards.correct=no.such.fn"], "algo.rewards.correct='no.such.fn' is not an importable callable"),
    (REINFORCE_LM, ["algo.advantage.step_rewards=no.such.fn"], "algo.advantage.step_rewards='no.such.fn' is not an importable callable"),
    # a callback whose protocol the module lacks (also the second job of a sweep: before the first runs)
    (PPO, ["callbacks=[default,adaptive_kl]"], "callbacks.adaptive_kl adapts a KL coefficient, but this PPO has none"),
    (GRPO, ["callbacks=[default,ref_policy_sync]"], "callbacks.ref_policy_sync needs a LightningModule with a reference policy"),
    (GRPO, ["-m", "callbacks=[default,adaptive_kl]", "algo.loss.kl_coef=0.04,0"], "callbacks.adaptive_kl adapts a KL coefficient, but this GRPO has none"),
]


def _fill(text: str, files: dict[str, str]) -> str:
    for name, path in files.items():
        text = text.replace("{" + name + "}", path)
    return text


def _digest(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and (p.suffix in (".ckpt", ".json", ".pt") or "checkpoints" in p.parts)
    }


@pytest.fixture(scope="module")
def previous_runs(tmp_path_factory):
    """A PPO and a GRPO run with checkpoints, plus bad files to point ckpt_path at."""
    root = tmp_path_factory.mktemp("bad_input")
    for name, base in (("ppo", PPO), ("grpo", GRPO)):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *base, f"hydra.run.dir={root / name}"],
            cwd=root, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    files = {"ppo_dir": root / "ppo", "grpo_dir": root / "grpo"}
    files["ppo_ckpt"] = root / "ppo" / "checkpoints" / "last.ckpt"
    files["grpo_ckpt"] = root / "grpo" / "checkpoints" / "last.ckpt"
    torch.manual_seed(0)
    (root / "garbage.ckpt").write_bytes(bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).tolist()))
    (root / "truncated.ckpt").write_bytes(files["ppo_ckpt"].read_bytes()[:5000])
    (root / "text.ckpt").write_text("not a checkpoint\n")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, root / "foreign.ckpt")
    torch.save({"plmods": {"iteration": 1}, "obj": Path("/x")}, root / "pickled.ckpt")
    (root / "empty_model").mkdir()
    files.update({name: root / f"{name}.ckpt" for name in ("garbage", "truncated", "text", "foreign", "pickled")})
    files["empty_dir"] = root / "empty_model"
    return root, {k: str(v) for k, v in files.items()}


def test_every_bad_input_is_one_line_exit_2_and_harms_nothing(previous_runs):
    root, files = previous_runs
    cases = []
    for base, overrides, _ in TABLE:
        lm = any(b is base for b in (GRPO, REINFORCE_LM, PPO_LM)) or "experiment=grpo_addition" in base
        run_dir = files["grpo_dir"] if lm else files["ppo_dir"]
        argv = [*base, *(_fill(o, files) for o in overrides)]
        if not any(a.startswith("hydra.run.dir=") for a in argv):
            argv.append(f"hydra.run.dir={run_dir}")
        if "-m" in argv:
            argv.append(f"hydra.sweep.dir={root / 'sweep'}")
        cases.append({"argv": argv})
    before = {name: _digest(Path(files[name])) for name in ("ppo_dir", "grpo_dir")}
    (root / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bad_input_runner.py"), str(root / "cases.json"), str(root / "results.json")],
        cwd=root, capture_output=True, text=True, timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())

    failures = []
    for (_, overrides, fragment), result in zip(TABLE, results, strict=True):
        lines = result["stderr"].strip().splitlines()
        ok = (
            result["code"] == 2
            and len(lines) == 1
            and lines[0].startswith("plmods: invalid setting: ")
            and _fill(fragment, files) in lines[0]
        )
        if not ok:
            failures.append(f"{overrides}: code {result['code']}, stderr {result['stderr'][-600:]!r}")
    after = {name: _digest(Path(files[name])) for name in ("ppo_dir", "grpo_dir")}
    summary = {"inputs": len(TABLE), "one_line_exit_2": len(TABLE) - len(failures), "harmed_files": sum(
        before[n][f] != after[n].get(f) for n in before for f in before[n])}
    (root / "summary.json").write_text(json.dumps(summary))
    print("bad-input table:", summary)
    assert not failures, "\n".join(failures)
    assert after == before  # checkpoints and summaries byte-identical
    assert not (root / "sweep").exists()  # a bad sweep job is caught before the first job runs
