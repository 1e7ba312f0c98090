"""`LLaVATrainer`: transformers' Trainer plus LLaVA's training specifics.

* separate learning rates for the projector (`--mm_projector_lr`) and ProxyV's guided-update
  modules (`--mm_vision_mlp_lr`);
* `--group_by_modality_length`: batches hold only multimodal or only text-only samples;
* stage 1 (only multimodal parts train) saves those weights to `mm_projector.bin`, also under
  ZeRO-3, and resumes from such a checkpoint;
* a LoRA run (`llava.train.lora`) saves its adapter, `non_lora_trainables.bin` and the LLaVA config,
  also under ZeRO-3, and resumes from such a checkpoint;
* skipped records are counted and summarised, too many of them or a NaN/inf loss stop the run
  (`llava.train.run_guards`); each checkpoint gets a completeness marker written last
  (`llava.train.checkpoints`).
"""

import copy
import logging
import os

import torch
from torch.utils.data import Sampler
from transformers import Trainer

from llava.errors import DamagedInputError
from llava.model.checkpoint_names import PROJECTOR_PREFIXES, PROXYV_MODULE_PREFIXES
from llava.model.lora_weights import NON_LORA_FILE, plain_name, without_quantization
from llava.model.projector_weights import load_mm_projector_weights, save_mm_projector_weights
from llava.train.checkpoints import mark_complete
from llava.train.lora import save_non_lora_trainables
from llava.train.run_guards import SkipTracker

logger = logging.getLogger(__name__)

MM_PROJECTOR_FILE = "mm_projector.bin"


class ModalityGroupedSampler(Sampler):
    """Shuffles multimodal and text-only samples separately, cuts each into global batches, and
    shuffles the batch order, so no batch mixes the two (LLaVA's modality grouping)."""

    def __init__(self, modality_lengths: list[int], global_batch_size: int, seed: int):
        self.modality_lengths = modality_lengths
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.modality_lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for want_images in (True, False):
            indices = [i for i, length in enumerate(self.modality_lengths) if (length > 0) == want_images]
            order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            batches += [order[i : i + self.global_batch_size] for i in range(0, len(order), self.global_batch_size)]
        for batch_index in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[batch_index]


class LLaVATrainer(Trainer):
    def __init__(self, *args, multimodal_only_prefixes: tuple[str, ...] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.multimodal_only_prefixes = multimodal_only_prefixes
        dataset_size = len(self.train_dataset) if self.train_dataset is not None else 0
        self.skips = SkipTracker(dataset_size, getattr(self.args, "max_bad_sample_fraction", 1.0))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The usual loss, after taking out the record ids the collator added; checks it is finite."""
        batch_ids, skipped = inputs.pop("ids", None), inputs.pop("skipped", [])
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            loss = result[0] if return_outputs else result
            self.skips.add(skipped, loss, self.state.global_step + 1, int(self.state.epoch or 0), batch_ids)
        return result

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            logger.warning("Data summary: %s", self.skips.summary())

    def _save_checkpoint(self, model, trial) -> None:
        """The usual checkpoint, then (after every process wrote its part) the completeness marker."""
        super()._save_checkpoint(model, trial)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            mark_complete(os.path.join(run_dir, f"checkpoint-{self.state.global_step}"), self.state.global_step)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.group_by_modality_length:
            global_batch = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
            return ModalityGroupedSampler(dataset.modality_lengths, global_batch, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        """AdamW groups: (projector | guided-update | rest) x (decay | no decay), each with its lr."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        special = [(PROJECTOR_PREFIXES, self.args.mm_projector_lr), (PROXYV_MODULE_PREFIXES, self.args.mm_vision_mlp_lr)]
        groups: dict[tuple, dict] = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            lr = next((lr for prefixes, lr in special if lr is not None and plain_name(name).startswith(prefixes)),
                      self.args.learning_rate)
            weight_decay = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, weight_decay), {"params": [], "lr": lr, "weight_decay": weight_decay})["params"].append(param)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(list(groups.values()), lr=self.args.learning_rate, **optimizer_kwargs)
        for group in groups.values():
            logger.info("optimizer group: lr %g, weight decay %g, %d tensors", group["lr"], group["weight_decay"],
                        len(group["params"]))
        return self.optimizer

    def _lora_base_model(self):
        """The model PEFT wraps when this is a LoRA run, else None."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "peft_config") else None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Stage 1 writes only the trained multimodal weights; a LoRA run its adapter, the fully trained
        weights and the LLaVA config; other stages the whole model."""
        output_dir = output_dir or self.args.output_dir
        base_model = self._lora_base_model()
        if base_model is not None:
            save_non_lora_trainables(base_model, output_dir, self.args.should_save)  # every rank gathers
            if self.args.should_save:  # the base it merges onto is not quantized, whatever --bits trained with
                without_quantization(copy.deepcopy(base_model.config)).save_pretrained(output_dir)
            return super().save_model(output_dir, _internal_call)
        if not self.multimodal_only_prefixes:
            return super().save_model(output_dir, _internal_call)
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save:
            model.config.save_pretrained(output_dir)
        # Every rank takes part in gathering ZeRO-3 shards; only the main process writes.
        weights_path = os.path.join(output_dir, MM_PROJECTOR_FILE)
        if self.args.should_save:
            save_mm_projector_weights(model, weights_path, self.multimodal_only_prefixes)
        else:
            save_mm_projector_weights(model, os.devnull, self.multimodal_only_prefixes)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        non_lora = os.path.join(resume_from_checkpoint, NON_LORA_FILE)
        base_model = self._lora_base_model()
        if base_model is not None and not self.is_deepspeed_enabled:  # (DeepSpeed's own checkpoint holds them)
            if not os.path.isfile(non_lora):
                raise DamagedInputError(f"LoRA checkpoint {resume_from_checkpoint} lacks {NON_LORA_FILE} (the projector "
                                        "and ProxyV weights); copy it back, or delete the checkpoint to resume from "
                                        "an earlier one.")
            params = {plain_name(name): param for name, param in base_model.named_parameters()}
            load_mm_projector_weights(base_model, non_lora, params)  # the adapter is transformers' to load
        projector = os.path.join(resume_from_checkpoint, MM_PROJECTOR_FILE)
        if self.multimodal_only_prefixes and os.path.isfile(projector) and not self.is_deepspeed_enabled:
            load_mm_projector_weights(model or self.model, projector)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
