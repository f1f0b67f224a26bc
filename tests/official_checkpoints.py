"""Official MAE training checkpoints, built as the official code saves them (util/misc.save_model):
{'model': model_without_ddp.state_dict(), 'optimizer': AdamW state dict over timm 0.3.2's add_weight_decay
groups, 'epoch': int, 'scaler': the GradScaler's state dict, 'args': the argparse.Namespace of
main_pretrain.py after init_distributed_mode}. The model is the micro MAE of the smoke preset."""

import argparse

import torch

OFFICIAL_ARCH = "mae_vit_micro_patch7_dec64d1b"  # 28x28x1, 128-d x 4 blocks: seconds on a CPU


def official_args(**changes):
    """main_pretrain.py's parsed arguments (its defaults, as for a torchrun launch), with `changes`."""
    args = dict(batch_size=64, epochs=400, accum_iter=1, model="mae_vit_large_patch16", input_size=224,
                mask_ratio=0.75, norm_pix_loss=True, weight_decay=0.05, lr=None, blr=1.5e-4, min_lr=0.0,
                warmup_epochs=40, data_path="/datasets01/imagenet_full_size/061417/", output_dir="./output_dir",
                log_dir="./output_dir", device="cuda", seed=0, resume="", start_epoch=0, num_workers=10,
                pin_mem=True, world_size=8, local_rank=-1, dist_on_itp=False, dist_url="env://", rank=0, gpu=0,
                distributed=True, dist_backend="nccl")
    args.update(changes)
    if args["lr"] is None:  # main_pretrain.py writes the absolute lr back into args
        args["lr"] = args["blr"] * args["batch_size"] * args["accum_iter"] * args["world_size"] / 256
    return argparse.Namespace(**args)


def official_groups(model, weight_decay):
    """timm 0.3.2 optim_factory.add_weight_decay, the official pretraining groups: [no decay, decay]."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def save_official(path, model, optimizer, epoch, scaler, args):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "scaler": scaler.state_dict(), "args": args}, path)


def official_pretraining_checkpoint(path, steps=2, epoch=3, target="norm_pixel", epochs=4):
    """A few steps of the official loop (AdamW betas (0.9, 0.95) over its groups, a GradScaler), then save."""
    from mae.model import create_mae_model
    torch.manual_seed(0)
    model = create_mae_model(OFFICIAL_ARCH, target=target)
    optimizer = torch.optim.AdamW(official_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cpu")  # the official NativeScaler's torch.cuda.amp.GradScaler, on the CPU
    for _ in range(steps):
        loss = model(torch.randn(4, 1, 28, 28))[0]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    save_official(path, model, optimizer, epoch, scaler,
                  official_args(model=OFFICIAL_ARCH, input_size=28, batch_size=2, epochs=epochs,
                                norm_pix_loss=target == "norm_pixel"))
    return model
