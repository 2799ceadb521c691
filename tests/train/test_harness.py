"""The training harness on tiny models: learning, accumulation, clipping, checkpoints, exact resume, metrics log."""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_tasks import Interrupt, Regression, interrupt_after, linear, mlp, mse_loss, noisy_mse_loss

from vpt.errors import VptError
from vpt.train import LrLambda, TrainConfig, Trainer, list_checkpoints, read_metrics


def config(tmp_path, **changes) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / "run"), seed=3, learning_rate=0.05, batch_size=4, max_steps=6, log_every=1,
                max_grad_norm=None)
    base.update(changes)
    return TrainConfig(**base)


def test_loss_decreases_and_rows_are_logged(tmp_path):
    cfg = config(tmp_path, max_steps=40, log_every=10, lr_schedule="cosine", warmup_steps=3, learning_rate=0.2)
    result = Trainer(linear(), cfg, dataset=Regression(32), loss_fn=mse_loss, quiet=True).train()
    rows = read_metrics(result.metrics_file)
    assert [row["step"] for row in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert set(rows[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "examples_per_s", "mae"}
    assert rows[0]["epoch"] == 1.25  # 8 micro-batches per epoch
    assert result.step == 40 and result.metrics == rows[-1]
    assert result.checkpoint == tmp_path / "run" / "checkpoint-40"


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    def one_step(batch_size, accumulation, name):
        model = linear(seed=1)
        cfg = config(tmp_path / name, batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1)
        trainer = Trainer(model, cfg, dataset=Regression(16), loss_fn=mse_loss, quiet=True)
        result = trainer.train()
        moments = [trainer.optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
        return model, result.metrics, moments

    big, big_row, big_moments = one_step(8, 1, "big")
    small, small_row, small_moments = one_step(4, 2, "small")
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for a, b in zip(big_moments, small_moments):  # (1 - beta1) * gradient: the gradients themselves agree
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert small_row["grad_norm"] == pytest.approx(big_row["grad_norm"], abs=1e-6)
    assert small_row["loss"] == pytest.approx(big_row["loss"], abs=1e-6)


def test_clipping_caps_the_update_and_logs_the_norm_before_clipping(tmp_path):
    def one_step(max_norm, name):
        model = linear(seed=2)
        trainer = Trainer(model, config(tmp_path / name, max_steps=1, max_grad_norm=max_norm),
                          dataset=Regression(8), loss_fn=mse_loss, quiet=True)
        row = trainer.train().metrics
        beta1 = trainer.config.betas[0]
        gradient = [trainer.optimizer.state[p]["exp_avg"] / (1 - beta1) for p in model.parameters()]
        return row, torch.linalg.vector_norm(torch.cat([g.flatten() for g in gradient])).item()

    free_row, free_norm = one_step(None, "free")
    clipped_row, clipped_norm = one_step(0.01, "clipped")
    assert free_row["grad_norm"] > 0.1
    assert free_norm == pytest.approx(free_row["grad_norm"], rel=1e-5)
    assert clipped_row["grad_norm"] == pytest.approx(free_row["grad_norm"], rel=1e-6)  # logged before clipping
    assert clipped_norm == pytest.approx(0.01, rel=1e-4)  # what the optimizer got


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # 20 examples, micro-batch 4, accumulation 2: 5 micro-batches = 3 optimizer steps per epoch (the last one short),
    # checkpoint every 2 steps, so checkpoint-4 sits in the middle of epoch 2.
    dataset = Regression(20)
    settings = dict(max_steps=6, gradient_accumulation_steps=2, save_every=2, keep_last=None, weight_decay=0.01,
                    lr_schedule="cosine", warmup_steps=2, max_grad_norm=0.5)

    straight_model = mlp()
    Trainer(straight_model, config(tmp_path / "a", **settings), dataset=dataset, loss_fn=noisy_mse_loss,
            quiet=True).train()

    resumed_model = mlp()
    cfg = config(tmp_path / "b", **settings)
    with pytest.raises(Interrupt):  # killed during step 6 (the 10th micro-batch), after step 5 was logged
        Trainer(resumed_model, cfg, dataset=dataset, loss_fn=interrupt_after(noisy_mse_loss, 9), quiet=True).train()
    assert [step for step, _ in list_checkpoints(cfg.output_dir)] == [2, 4]
    assert [row["step"] for row in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5]

    resumed_model = mlp(seed=99)  # a fresh process: the weights come from the checkpoint
    result = Trainer(resumed_model, cfg, dataset=dataset, loss_fn=noisy_mse_loss, quiet=True).train(resume=True)
    assert result.resumed_from == tmp_path / "b" / "run" / "checkpoint-4"
    assert result.step == 6
    for (name, a), (_, b) in zip(straight_model.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(a, b), name

    straight_rows = read_metrics(tmp_path / "a" / "run" / "metrics.jsonl")
    resumed_rows = read_metrics(tmp_path / "b" / "run" / "metrics.jsonl")
    assert [row["step"] for row in resumed_rows] == [1, 2, 3, 4, 5, 6]  # no duplicated step 5
    for a, b in zip(straight_rows, resumed_rows):
        a.pop("examples_per_s"), b.pop("examples_per_s")
        assert a == b


def test_a_finished_run_resumes_to_nothing_and_refuses_a_silent_restart(tmp_path):
    cfg = config(tmp_path, max_steps=3)
    Trainer(linear(), cfg, dataset=Regression(8), loss_fn=mse_loss, quiet=True).train()
    with pytest.raises(VptError, match="already holds a training run"):
        Trainer(linear(), cfg, dataset=Regression(8), loss_fn=mse_loss, quiet=True).train()
    again = Trainer(linear(), cfg, dataset=Regression(8), loss_fn=mse_loss, quiet=True).train(resume=True)
    assert again.step == 3 and again.metrics["step"] == 3
    assert len(read_metrics(again.metrics_file)) == 3
    with pytest.raises(VptError, match="examples per optimizer step"):
        Trainer(linear(), cfg.replace(batch_size=2), dataset=Regression(8), loss_fn=mse_loss,
                quiet=True).train(resume=True)


def test_keep_last_checkpoints_and_their_contents(tmp_path):
    cfg = config(tmp_path, max_steps=5, save_every=1, keep_last=2)
    Trainer(linear(), cfg, dataset=Regression(8), loss_fn=mse_loss, quiet=True).train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [".vpt-owned", "checkpoint-4", "checkpoint-5", "metrics.jsonl"]
    last = run / "checkpoint-5"
    assert sorted(p.name for p in last.iterdir()) == ["config.json", "optimizer.pt", "rng_state.pt", "scheduler.pt",
                                                      "trainable.safetensors", "trainer_state.json"]
    assert TrainConfig.from_json(last / "config.json") == cfg
    state = json.loads((last / "trainer_state.json").read_text())
    assert state == {"step": 5, "epoch": 2, "step_in_epoch": 1, "step_examples": 4, "total_steps": 5,
                     "num_processes": 1}
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pt"):
        torch.load(last / name, weights_only=True)


def test_epochs_limit_and_eval_every(tmp_path):
    calls = []

    def eval_fn(model):
        assert not model.training and not torch.is_grad_enabled()
        calls.append(1)
        return {"mse": torch.tensor(float(len(calls)))}

    cfg = config(tmp_path, max_steps=None, epochs=2, eval_every=2, log_every=3)
    result = Trainer(linear(), cfg, dataset=Regression(12), loss_fn=mse_loss, eval_fn=eval_fn, quiet=True).train()
    rows = read_metrics(result.metrics_file)
    assert result.step == 6 and result.epoch == 2.0
    assert [(row["step"], "loss" in row, row.get("eval/mse")) for row in rows] == [
        (2, False, 1.0), (3, True, None), (4, False, 2.0), (6, True, 3.0)]


def test_param_group_learning_rates(tmp_path):
    model = mlp(dropout=0.0)
    cfg = config(tmp_path, max_steps=2, param_group_lrs={"3.*": 0.001}, no_decay=["*.bias"], weight_decay=0.1)
    trainer = Trainer(model, cfg, dataset=Regression(8), loss_fn=mse_loss, quiet=True)
    row = trainer.train().metrics
    assert row["lr"] == 0.05 and row["lr/group2"] == 0.001
    groups = [(g["names"], g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups]
    assert groups == [(["0.weight"], 0.05, 0.1), (["0.bias"], 0.05, 0.0), (["3.weight"], 0.001, 0.1),
                      (["3.bias"], 0.001, 0.0)]
    with pytest.raises(VptError, match="matches no trainable parameter"):
        Trainer(mlp(), config(tmp_path / "typo", param_group_lrs={"head.*": 0.1}), dataset=Regression(8),
                loss_fn=mse_loss, quiet=True).train()


def test_bf16_mixed_precision_trains(tmp_path):
    cfg = config(tmp_path, max_steps=20, log_every=10, mixed_precision="bf16")
    model = linear()
    result = Trainer(model, cfg, dataset=Regression(16), loss_fn=mse_loss, quiet=True).train()
    rows = read_metrics(result.metrics_file)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert model.weight.dtype == torch.float32
    assert model(torch.zeros(1, 4)).dtype == torch.float32  # the autocast wrapper is gone after training


def test_progress_goes_to_stderr_only(tmp_path, capsys):
    Trainer(linear(), config(tmp_path, max_steps=2), dataset=Regression(8), loss_fn=mse_loss).train()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "step 2/2" in captured.err and "loss" in captured.err
    Trainer(linear(), config(tmp_path / "q", max_steps=2), dataset=Regression(8), loss_fn=mse_loss,
            quiet=True).train()
    assert capsys.readouterr().err == ""


def test_config_validation_and_json_round_trip(tmp_path):
    cfg = TrainConfig(max_steps=5, betas=[0.8, 0.9], param_group_lrs={"*.lora_*": 1e-3}, no_decay=["*.bias"])
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(VptError, match="--max-steps nor --epochs"):
        TrainConfig()
    with pytest.raises(VptError, match="--lr-schedule"):
        TrainConfig(max_steps=1, lr_schedule="step")
    with pytest.raises(VptError, match="unknown field"):
        TrainConfig.from_dict({"max_steps": 1, "lr": 1.0})
    with pytest.raises(VptError, match="empty"):
        Trainer(linear(), config(tmp_path), dataset=Regression(0), loss_fn=mse_loss, quiet=True).train()


def test_learning_rate_schedules():
    warm = LrLambda("cosine", warmup=4, total=10)
    assert [warm(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warm(4) == 1.0 and warm(10) == pytest.approx(0.0) and warm(7) == pytest.approx(0.5)
    assert LrLambda("linear", 0, 10, min_ratio=0.1)(5) == pytest.approx(0.55)
    assert LrLambda("constant", 2, 10)(9) == 1.0
    assert math.isclose(LrLambda("cosine", 0, 10, 0.2)(10), 0.2)


def test_resume_takes_hyperparameters_from_the_current_config(tmp_path):
    cfg = config(tmp_path, max_steps=4, lr_schedule="cosine")
    Trainer(linear(), cfg, dataset=Regression(8), loss_fn=mse_loss, quiet=True).train()
    longer = cfg.replace(max_steps=8, learning_rate=0.1)  # train on, with a new schedule length and peak
    result = Trainer(linear(), longer, dataset=Regression(8), loss_fn=mse_loss, quiet=True).train(resume=True)
    rows = read_metrics(result.metrics_file)
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert [row["lr"] for row in rows[4:]] == [0.1 * LrLambda("cosine", 0, 8)(step) for step in range(4, 8)]
    with pytest.raises(VptError, match="other trainable parameters or parameter groups"):
        Trainer(linear(), longer.replace(max_steps=9, param_group_lrs={"bias": 0.01}), dataset=Regression(8),
                loss_fn=mse_loss, quiet=True).train(resume=True)
    with pytest.raises(VptError, match="does not fit this model"):
        Trainer(mlp(), longer.replace(max_steps=9), dataset=Regression(8), loss_fn=mse_loss,
                quiet=True).train(resume=True)


def test_a_trainer_trains_once(tmp_path):
    trainer = Trainer(linear(), config(tmp_path, max_steps=1), dataset=Regression(8), loss_fn=mse_loss, quiet=True)
    trainer.train()
    with pytest.raises(RuntimeError, match="once"):
        trainer.train(resume=True)


def test_a_warm_started_chain_equals_one_run_over_the_joined_data(tmp_path):
    # Two on-policy iterations (8 examples each, 2 steps each) warm-started one from the other give the weights of one
    # unshuffled 4-step run over both datasets: optimizer moments, warmup position and RNGs all carry over.
    first, second = Regression(8, seed=0), Regression(8, seed=1)
    settings = dict(shuffle=False, warmup_steps=3, weight_decay=0.01, max_grad_norm=0.5, max_steps=2)
    straight = mlp()
    Trainer(straight, config(tmp_path / "straight", **{**settings, "max_steps": 4}),
            dataset=torch.utils.data.ConcatDataset([first, second]), loss_fn=noisy_mse_loss, quiet=True).train()

    chained = mlp()
    before = Trainer(chained, config(tmp_path / "one", **settings), dataset=first, loss_fn=noisy_mse_loss,
                     quiet=True).train()
    chained = mlp(seed=7)  # the next iteration is a new process: the weights come from the checkpoint
    after = Trainer(chained, config(tmp_path / "two", **settings), dataset=second, loss_fn=noisy_mse_loss,
                    quiet=True).train(warm_start=before.checkpoint)
    assert after.step == 4 and after.checkpoint == tmp_path / "two" / "run" / "checkpoint-4"
    assert [row["step"] for row in read_metrics(after.metrics_file)] == [3, 4]
    for (name, a), (_, b) in zip(straight.named_parameters(), chained.named_parameters()):
        assert torch.equal(a, b), name


def test_a_warm_start_needs_a_constant_schedule(tmp_path):
    done = Trainer(linear(), config(tmp_path / "one"), dataset=Regression(8), loss_fn=mse_loss, quiet=True).train()
    trainer = Trainer(linear(), config(tmp_path / "two", lr_schedule="cosine"), dataset=Regression(8),
                      loss_fn=mse_loss, quiet=True)
    with pytest.raises(VptError, match="lr_schedule 'cosine' cannot continue across warm-started runs"):
        trainer.train(warm_start=done.checkpoint)


def test_a_task_that_backpropagates_itself_equals_one_backward(tmp_path):
    """own_backward: two partial backward passes per micro-batch (as gradient-decoupled DPO does), scaled by the
    accelerator for accumulation, give the weights of the plain loss."""

    def split_loss(model, batch, backward):
        prediction = model(batch["x"])
        half = len(prediction) // 2
        squared = (prediction - batch["y"]) ** 2
        backward(squared[:half].sum() / len(prediction))
        prediction = model(batch["x"])  # a fresh graph: the first one was freed by its backward pass
        squared = (prediction - batch["y"]) ** 2
        backward(squared[half:].sum() / len(prediction))
        return squared.mean().detach(), {}

    def train(loss_fn, own_backward, name):
        model = linear(seed=4)
        cfg = config(tmp_path / name, gradient_accumulation_steps=2, max_steps=3)
        Trainer(model, cfg, dataset=Regression(24), loss_fn=loss_fn, own_backward=own_backward, quiet=True).train()
        return model

    plain, split = train(mse_loss, False, "plain"), train(split_loss, True, "split")
    moved = linear(seed=4)
    for a, b, start in zip(plain.parameters(), split.parameters(), moved.parameters()):
        assert not torch.equal(a, start)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


class EpochAwareRegression(Regression):
    """Items shift with the epoch the harness announces: the data of epoch e is y + e."""

    def __init__(self, n: int):
        super().__init__(n)
        self.epochs_seen: list[int] = []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if not self.epochs_seen or self.epochs_seen[-1] != epoch:  # accelerate's loader may repeat the call
            self.epochs_seen.append(epoch)
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        return {**item, "y": item["y"] + self.epoch}


def test_the_dataset_hears_each_epoch_before_its_items_and_again_on_resume(tmp_path):
    dataset = EpochAwareRegression(8)
    Trainer(linear(), config(tmp_path, epochs=3, max_steps=None, save_every=2), dataset=dataset, loss_fn=mse_loss,
            quiet=True).train()
    assert dataset.epochs_seen == [0, 1, 2]

    straight = linear()
    Trainer(straight, config(tmp_path / "straight", epochs=3, max_steps=None), dataset=EpochAwareRegression(8),
            loss_fn=mse_loss, quiet=True).train()
    stopped = config(tmp_path / "stopped", epochs=3, max_steps=None, save_every=1)
    with pytest.raises(Interrupt):
        Trainer(linear(), stopped, dataset=EpochAwareRegression(8), loss_fn=interrupt_after(mse_loss, 3),
                quiet=True).train()
    resumed, dataset = linear(), EpochAwareRegression(8)
    Trainer(resumed, stopped, dataset=dataset, loss_fn=mse_loss, quiet=True).train(resume=True)
    assert dataset.epochs_seen == [1, 2]  # stopped inside epoch 1: the resumed run starts there
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_bf16_mixed_precision_keeps_one_copy_of_each_lora_input(tmp_path):
    """A LoRA over a bf16 base under bf16 autocast: the harness feeds the LoRA layers their bf16 inputs (peft would
    first copy each to float32, a second saved activation); the adapter stays float32 and learns."""
    from peft import LoraConfig, get_peft_model

    def lora_mlp():
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).to(torch.bfloat16)
        return get_peft_model(base, LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights=False))

    def saved_bytes(model, batch, cast: bool) -> int:
        from peft.helpers import disable_input_dtype_casting

        storages = {}

        def keep(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), \
                torch.autocast("cpu", dtype=torch.bfloat16), disable_input_dtype_casting(model, active=not cast):
            model(batch["x"]).float().sum()
        return sum(storages.values())

    flags = []

    def loss_fn(model, batch):
        flags.extend(layer.cast_input_dtype_enabled for layer in model.modules() if hasattr(layer, "lora_A"))
        prediction = model(batch["x"]).float()
        return torch.nn.functional.mse_loss(prediction, batch["y"]), {}

    model = lora_mlp()
    batch = {"x": torch.randn(32, 4)}
    assert saved_bytes(model, batch, cast=False) < saved_bytes(model, batch, cast=True)
    cfg = config(tmp_path, max_steps=20, log_every=10, mixed_precision="bf16", learning_rate=0.02)
    result = Trainer(model, cfg, dataset=Regression(16), loss_fn=loss_fn, quiet=True).train()
    rows = read_metrics(result.metrics_file)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert flags and not any(flags)  # the harness's forward fed bf16 inputs
    assert all(layer.cast_input_dtype_enabled for layer in model.modules() if hasattr(layer, "lora_A"))
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
