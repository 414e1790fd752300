"""The fine-tuning curve: training and validation loss per epoch, and validation accuracy where there is one."""
from __future__ import annotations

from typing import Any

from deprune_onnx.report.plots import figure_png, pyplot


def curve_png(history: list[dict[str, Any]], best_epoch: int, selected_by: str) -> bytes:
    """PNG bytes of the losses (left axis) and, when measured, validation top-1 of student and teacher (right
    axis) over the epochs of ``history`` (epoch 0: the pruned model before training); the best epoch is marked."""
    plt = pyplot()
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    epochs = [record["epoch"] for record in history]
    trained = [record for record in history if record["train_loss"] is not None]
    loss_axis.plot([r["epoch"] for r in trained], [r["train_loss"] for r in trained], "o-", label="train loss")
    loss_axis.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation loss")
    loss_axis.plot(epochs, [r["val_kl"] for r in history], "^--", label="validation KL to teacher (T=1)")
    loss_axis.set_xlabel("epoch (0 = pruned, before fine-tuning)")
    loss_axis.set_ylabel("loss")
    loss_axis.axvline(best_epoch, color="grey", linestyle=":", label=f"written: epoch {best_epoch} ({selected_by})")
    handles, labels = loss_axis.get_legend_handles_labels()
    if all("val_accuracy" in r for r in history):
        accuracy_axis = loss_axis.twinx()
        accuracy_axis.plot(epochs, [100 * r["val_accuracy"] for r in history], "d-", color="tab:red",
                           label="validation top-1 (%)")
        accuracy_axis.plot(epochs, [100 * r["val_teacher_accuracy"] for r in history], ":", color="tab:red",
                           label="teacher top-1 (%)")
        accuracy_axis.set_ylabel("top-1 (%)")
        more_handles, more_labels = accuracy_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    loss_axis.legend(handles, labels, fontsize="small", loc="best")
    loss_axis.set_title("deprune-onnx finetune")
    figure.tight_layout()
    return figure_png(figure)
