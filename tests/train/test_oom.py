"""The out-of-memory message: the weights / gradients / AdamW arithmetic, and minift.memory's estimate of the run's
own method (the Method passed whole, not copied option by option)."""
import torch

from minift.peft import apply
from minift.train.config import TrainConfig
from minift.train.oom import out_of_memory_message, static_memory


def test_oom_message_counts_weights_gradients_and_adam_states(bert):
    model = bert()
    n_all = sum(p.numel() for p in model.parameters())
    for p in model.bert.parameters():
        p.requires_grad_(False)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts = static_memory(model)
    assert parts == {"weights": 4 * n_all, "gradients": 4 * n_train, "optimizer": 8 * n_train}
    message = out_of_memory_message(model, TrainConfig(method="lora", max_length=64), torch.device("cpu"))
    assert "--batch-size" in message and "--grad-accum" in message and "(lora r=8," in message
    assert "minift.memory estimate: peak" in message  # the full estimate, activations included


def test_oom_message_estimates_the_method_as_applied(bert):
    config = TrainConfig(method="lora", lora={"r": 4, "dropout": 0.0, "targets": ["query"]}, train_head=False,
                         max_length=64)
    model = apply(bert(), config.method_spec)
    message = out_of_memory_message(model, config, torch.device("cpu"))
    assert "(lora r=4 (query)," in message and "minift.memory estimate: peak" in message
