"""The Hugging Face teacher adapter: every supported class built from its config with random
weights, read on a padded batch; the last stage against the HF model's own outputs, every stage
against our independent implementation where one exists; classes mapped; bad teachers refused."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from detr_models.pretrained.hf_folder import import_hf
from distill.hf_families import FEATURES, QUERIES, STAGES
from distill.hf_teacher import (
    ABSENT_LOGIT,
    HfTeacher,
    TeacherUnavailable,
    input_normalisation,
    load_hf_model,
)
from tests.hf_teachers import CLASSIC, KINDS

SIZE = 128


@pytest.fixture(scope="module")
def folders(hf_teacher_folders):
    return hf_teacher_folders


def _adapter(folder) -> HfTeacher:
    model, family = load_hf_model(folder)
    return HfTeacher(model, family, input_normalisation(folder, family))


def _padded_batch(seed: int = 0):
    """Our pipeline's input: ImageNet-normalised pixels [2,3,S,S], the second image padded
    right and bottom (pixel_mask True there, pixels 0)."""
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand(2, 3, SIZE, SIZE, generator=generator)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    images = (unit - mean) / std
    mask = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    mask[1, :, 96:] = True
    mask[1, 100:] = True
    images[1][:, mask[1]] = 0
    return images, mask


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_fields_and_last_stage_equal_the_hf_model(kind, folders):
    teacher = _adapter(folders[kind])
    profile = teacher.profile
    images, mask = _padded_batch()
    out = teacher(images, mask)

    layers, batch = profile.decoder_layers, 2
    queries, classes, dim = out.logits.shape[2], 5, profile.hidden_dim
    assert out.logits.shape == (layers, batch, queries, classes)
    assert out.boxes.shape == (layers, batch, queries, 4)
    assert out.hidden.shape == (layers, batch, queries, dim)
    position = 4 if profile.query_kind == "anchor" else dim
    assert out.init_content.shape == (batch, queries, dim)
    assert out.init_position.shape == (batch, queries, position)
    assert len(out.features) == len(profile.feature_strides) == len(out.feature_masks)
    for feature, feature_mask, stride in zip(
        out.features, out.feature_masks, profile.feature_strides, strict=True
    ):
        assert feature.shape == (batch, dim, -(-SIZE // stride), -(-SIZE // stride))
        assert feature_mask.shape == (batch, *feature.shape[-2:])
        assert not feature_mask[0].any()
        assert feature_mask[1].any() == (stride <= 32)  # coarser maps round the padding away
    assert profile.provides == frozenset({STAGES, FEATURES, QUERIES})
    assert profile.class_names == ["cat", "dog", "bird", "car", "tree"]

    # the HF model's own final predictions, on the pixels its image processor would give
    pixels = ((images * teacher.in_std + teacher.in_mean) - teacher.out_mean) / teacher.out_std
    with torch.no_grad():
        own = teacher.model(pixel_values=pixels, pixel_mask=(~mask).long())
    scores = own.logits.softmax(-1)[..., :-1] if kind == "detr" else own.logits.sigmoid()
    torch.testing.assert_close(out.logits[-1].sigmoid(), scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.boxes[-1], own.pred_boxes, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.hidden[-1], own.last_hidden_state, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", CLASSIC)
def test_every_stage_equals_our_own_implementation_of_the_same_weights(kind, folders):
    """An independent reference for the intermediate stages: the same HF weights imported into
    this product's native model (parity-tested on final outputs in test_pretrained)."""
    teacher = _adapter(folders[kind])
    native = import_hf(folders[kind]).model.eval()
    images, mask = _padded_batch(1)
    ours = teacher(images, mask)
    with torch.no_grad():
        reference = native(images, mask)
    assert ours.num_stages == reference.num_stages
    torch.testing.assert_close(ours.logits.sigmoid(), reference.logits.sigmoid(), atol=2e-5, rtol=0)
    torch.testing.assert_close(ours.boxes, reference.boxes, atol=2e-5, rtol=0)
    torch.testing.assert_close(ours.hidden, reference.hidden, atol=2e-4, rtol=1e-4)
    for mine, theirs in zip(ours.features, reference.features, strict=True):
        torch.testing.assert_close(mine, theirs, atol=2e-4, rtol=1e-4)


def test_classes_map_onto_the_dataset_and_absent_ones_are_near_zero(folders):
    teacher = _adapter(folders["d_fine"])
    images, mask = _padded_batch()
    full = teacher(images, mask).logits
    teacher.map_classes([1, None, 0])  # dataset: dog, (none), cat
    mapped = teacher(images, mask).logits
    assert mapped.shape[-1] == 3
    torch.testing.assert_close(mapped[..., 0], full[..., 1])
    torch.testing.assert_close(mapped[..., 2], full[..., 0])
    assert torch.all(mapped[..., 1] == ABSENT_LOGIT)
    assert teacher.covered == [0, 2]
    teacher.map_classes([2, 0, 1])
    assert teacher.covered is None


def test_the_teacher_stays_frozen_in_train_mode(folders):
    teacher = _adapter(folders["rtdetr_v2"])
    teacher.train()
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["rtdetr_v2", "d_fine", "lw_detr", "rf_detr"])
def test_sizes_the_model_cannot_read_are_padded_and_answers_mapped_back(kind, folders):
    """A 112x80 batch reaches the model padded (to multiples of 32; square for RF-DETR): the
    answers equal those on the batch padded by hand, boxes rescaled to the batch's canvas, maps
    cropped to it."""
    teacher = _adapter(folders[kind])
    images, mask = _padded_batch()
    small, small_mask = images[..., :112, :80], mask[..., :112, :80]
    out = teacher(small, small_mask)
    side = (128, 128) if kind == "rf_detr" else (128, 96)
    # padded with zeros in the model's own input space, as HF image processors pad
    by_hand = torch.zeros(2, 3, *side)
    unit = small * teacher.in_std + teacher.in_mean
    by_hand[..., :112, :80] = (unit - teacher.out_mean) / teacher.out_std
    by_hand = (by_hand * teacher.out_std + teacher.out_mean - teacher.in_mean) / teacher.in_std
    hand_mask = torch.ones(2, *side, dtype=torch.bool)
    hand_mask[..., :112, :80] = small_mask
    reference = teacher(by_hand, hand_mask)
    scale = torch.tensor([side[1] / 80, side[0] / 112] * 2)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.boxes, reference.boxes * scale, atol=1e-5, rtol=1e-4)
    for mine, theirs, stride in zip(
        out.features, reference.features, teacher.profile.feature_strides, strict=True
    ):
        assert mine.shape[-2:] == (-(-112 // stride), -(-80 // stride))
        cropped = theirs[..., : mine.shape[-2], : mine.shape[-1]]
        torch.testing.assert_close(mine, cropped, atol=1e-4, rtol=1e-4)


def test_an_unsupported_class_names_the_supported_ones(tmp_path, folders):
    folder = tmp_path / "yolos"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["YolosForObjectDetection"]}))
    with pytest.raises(
        TeacherUnavailable,
        match=r"YolosForObjectDetection is not a supported.*DFineForObjectDetection",
    ):
        load_hf_model(folder)


def test_missing_transformers_gives_the_install_command(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(TeacherUnavailable, match=r"pip install 'detrdistill\[hf\]'"):
        load_hf_model(folders["detr"])


def test_pickled_weights_are_never_loaded(tmp_path, folders):
    folder = tmp_path / "bin_only"
    folder.mkdir()
    (folder / "config.json").write_text((folders["detr"] / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(TeacherUnavailable, match=r"no \*\.safetensors weights"):
        load_hf_model(folder)


def test_the_image_processor_config_decides_the_normalisation(tmp_path, folders):
    _, family = load_hf_model(folders["d_fine"])
    assert input_normalisation(folders["d_fine"], family) is None  # [0, 1] pixels
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5] * 3})
    )
    assert input_normalisation(tmp_path, family) == ((0.5,) * 3, (0.5,) * 3)


def test_half_precision_applies_to_gpus_only(folders):
    model, family = load_hf_model(folders["rtdetr_v2"])
    images, mask = _padded_batch()
    full = HfTeacher(model, family)(images, mask)
    half = HfTeacher(model, family, precision="bf16")(images, mask)  # CPU: ignored
    assert torch.equal(full.logits, half.logits) and torch.equal(full.boxes, half.boxes)
    if torch.cuda.is_available():
        teacher = HfTeacher(model, family, precision="bf16").cuda()
        on_gpu = teacher(images.cuda(), mask.cuda())
        assert on_gpu.logits.dtype == torch.float32  # handed on in float32
        torch.testing.assert_close(on_gpu.boxes.cpu(), full.boxes, atol=5e-2, rtol=0)
