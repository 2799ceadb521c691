"""What trains: peft LoRA adapters, parameters by pattern, single embedding rows — and how checkpoints hold them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vpt.errors import VptError
from vpt.train import (TrainConfig, Trainer, apply_lora, count_parameters, freeze, load_peft, mark_trainable,
                       train_embedding_rows)


class TokenModel(torch.nn.Module):
    """Embeds token ids, mixes them through Linear layers named like attention projections, predicts a scalar."""

    def __init__(self, vocab: int = 12, dim: int = 8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.q_proj = torch.nn.Linear(dim, dim)
        self.v_proj = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 1, bias=False)

    def forward(self, tokens):
        hidden = self.embed(tokens)
        hidden = hidden + torch.tanh(self.q_proj(hidden)) * self.v_proj(hidden)
        return self.head(hidden.mean(dim=1)).squeeze(-1)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, vocab: int = 12):
        generator = torch.Generator().manual_seed(5)
        self.tokens = torch.randint(0, vocab, (n, 6), generator=generator)
        self.target = torch.randn(n, generator=generator)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"tokens": self.tokens[i], "target": self.target[i]}


def loss_fn(model, batch):
    return torch.nn.functional.mse_loss(model(batch["tokens"]), batch["target"]), {}


def make_model() -> TokenModel:
    torch.manual_seed(0)
    return TokenModel()


def config(tmp_path, **changes):
    base = dict(output_dir=str(tmp_path / "run"), learning_rate=0.05, batch_size=4, max_steps=6, log_every=3,
                weight_decay=0.1, max_grad_norm=1.0)
    base.update(changes)
    return TrainConfig(**base)


def test_only_the_chosen_embedding_rows_change_even_with_weight_decay(tmp_path):
    model = make_model()
    freeze(model)
    mark_trainable(model, ["head.*"])
    train_embedding_rows(model.embed, [9, 10, 11])  # three "added tokens"
    assert count_parameters(model) == (3 * 8 + 8, sum(p.numel() for p in model.parameters()))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    dataset = Tokens()
    dataset.tokens[:, 0] = torch.arange(16) % 3 + 9  # every example uses one of the trained tokens
    result = Trainer(model, config(tmp_path), dataset=dataset, loss_fn=loss_fn, quiet=True).train()

    after = dict(model.named_parameters())
    assert torch.equal(after["embed.weight"][:9], before["embed.weight"][:9])
    assert not torch.equal(after["embed.weight"][9:], before["embed.weight"][9:])
    assert all(not torch.equal(after["embed.weight"][row], before["embed.weight"][row]) for row in (9, 10, 11))
    assert not torch.equal(after["head.weight"], before["head.weight"])
    for name in ("q_proj.weight", "q_proj.bias", "v_proj.weight", "v_proj.bias"):
        assert torch.equal(after[name], before[name])

    saved = load_file(str(result.checkpoint / "trainable.safetensors"))
    assert sorted(saved) == ["embed.weight@row_index", "embed.weight@rows", "head.weight"]
    assert saved["embed.weight@rows"].shape == (3, 8) and saved["embed.weight@row_index"].tolist() == [9, 10, 11]


def test_trained_rows_get_adamw_decoupled_decay():
    # One AdamW step on a row-masked embedding == one AdamW step on a separate parameter holding just those rows.
    from vpt.train import build_optimizer

    torch.manual_seed(1)
    embedding = torch.nn.Embedding(6, 3)
    rows = torch.nn.Parameter(embedding.weight.detach()[[4, 5]].clone())
    train_embedding_rows(embedding, [4, 5])
    cfg = TrainConfig(max_steps=1, learning_rate=0.1, weight_decay=0.5)
    masked = build_optimizer(embedding, cfg)
    reference = torch.optim.AdamW([rows], lr=0.1, weight_decay=0.5)
    target = torch.randn(2, 3)
    for _ in range(3):
        for optimizer in (masked, reference):
            optimizer.zero_grad()
        ((embedding(torch.tensor([4, 5])) - target) ** 2).sum().backward()
        ((rows - target) ** 2).sum().backward()
        masked.step()
        reference.step()
    torch.testing.assert_close(embedding.weight[[4, 5]], rows, atol=1e-7, rtol=0)


def test_lora_trains_only_the_adapters_and_resumes_from_the_adapter_checkpoint(tmp_path):
    model = apply_lora(make_model(), ["q_proj", "v_proj"], rank=2, alpha=4, dropout=0.1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"base_model.model.{m}.lora_{ab}.default.weight" for m in ("q_proj", "v_proj") for ab in "AB"}
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = config(tmp_path, save_every=3)
    result = Trainer(model, cfg, dataset=Tokens(), loss_fn=loss_fn, quiet=True).train()

    for name, param in model.named_parameters():
        if name in base_before:
            assert torch.equal(param, base_before[name]), name
        elif name.endswith("lora_B.default.weight"):  # B starts at zero, so it must have moved
            assert not torch.equal(param, lora_before[name]), name
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in result.checkpoint.iterdir()}
    assert not (result.checkpoint / "trainable.safetensors").exists()

    fresh = apply_lora(make_model(), ["q_proj", "v_proj"], rank=2, alpha=4, dropout=0.1)
    load_peft(fresh, result.checkpoint)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name

    # Interrupted after step 3, resumed from checkpoint-3: the same adapters as the straight run (dropout included).
    interrupted = apply_lora(make_model(), ["q_proj", "v_proj"], rank=2, alpha=4, dropout=0.1)
    cfg_b = config(tmp_path / "b", save_every=3)
    calls = {"n": 0}

    def dying_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return loss_fn(model, batch)

    with pytest.raises(KeyboardInterrupt):
        Trainer(interrupted, cfg_b, dataset=Tokens(), loss_fn=dying_loss, quiet=True).train()
    resumed = apply_lora(make_model(), ["q_proj", "v_proj"], rank=2, alpha=4, dropout=0.1)
    Trainer(resumed, cfg_b, dataset=Tokens(), loss_fn=loss_fn, quiet=True).train(resume=True)
    for (name, a), (_, b) in zip(model.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name


def test_lora_with_extra_trainable_parameters_saves_them_beside_the_adapter(tmp_path):
    model = apply_lora(make_model(), ["q_proj"], rank=2, alpha=2)
    mark_trainable(model, ["*.head.*"])
    train_embedding_rows(model.base_model.model.embed, [11])
    result = Trainer(model, config(tmp_path, max_steps=2), dataset=Tokens(), loss_fn=loss_fn, quiet=True).train()
    extra = load_file(str(result.checkpoint / "non_adapter.safetensors"))
    assert sorted(extra) == ["base_model.model.embed.weight@row_index", "base_model.model.embed.weight@rows",
                             "base_model.model.head.weight"]
    fresh = apply_lora(make_model(), ["q_proj"], rank=2, alpha=2)
    mark_trainable(fresh, ["*.head.*"])
    train_embedding_rows(fresh.base_model.model.embed, [11])
    load_peft(fresh, result.checkpoint)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b), name


def test_export_hook_and_extra_state(tmp_path):
    exported = []

    def export(model, directory, weights):
        exported.append(directory.name)
        assert torch.equal(weights["head.weight"], model.head.weight.detach())
        torch.save({"head": model.head.weight.detach()}, directory / "model.pth")

    class Curriculum:
        def __init__(self):
            self.level = 0

        def state_dict(self):
            return {"level": self.level}

        def load_state_dict(self, state):
            self.level = state["level"]

    curriculum = Curriculum()

    def loss_with_curriculum(model, batch):
        curriculum.level += 1
        return loss_fn(model, batch)

    cfg = config(tmp_path, max_steps=4, save_every=2)
    result = Trainer(make_model(), cfg, dataset=Tokens(), loss_fn=loss_with_curriculum, save_model=export,
                     extra_state=curriculum, quiet=True).train()
    names = {p.name for p in result.checkpoint.iterdir()}
    assert {"model.pth", "trainable.safetensors", "extra_state.pt"} <= names  # export + the harness's own weights
    assert exported[-1].startswith(".checkpoint-4.tmp-")  # written inside the atomic temporary directory
    restored = Curriculum()
    Trainer(make_model(), cfg.replace(max_steps=5), dataset=Tokens(), loss_fn=loss_fn, extra_state=restored,
            quiet=True).train(resume=result.checkpoint)
    assert restored.level == 4


def test_helpers_refuse_unknown_names():
    with pytest.raises(VptError, match="matches no parameter"):
        mark_trainable(make_model(), ["*.vision.*"])
    with pytest.raises(VptError, match="LoRA targets"):
        apply_lora(make_model(), ["k_proj"])
    with pytest.raises(VptError, match="rows must lie"):
        train_embedding_rows(make_model().embed, [12])
