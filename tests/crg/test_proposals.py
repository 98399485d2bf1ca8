"""Region proposals on tiny random-config GroundingDINO and OWLv2 models, saved and reloaded offline."""

import math
import string

import pytest
import torch
from PIL import Image

from vcontrast.crg import proposals
from vcontrast.crg.proposals import (
    DetectorProposer,
    Proposal,
    RegionProposer,
    box_iou,
    get_proposer,
    nms,
    propose_regions,
    register_proposer,
)
from vcontrast.models.image_backend import image_backend_of

WIDTH, HEIGHT = 90, 50  # non-square on purpose: x and y scale differently
WORDS = ["a", "the", "cat", "dog", "red", "plate", "cup", "blue", "ball", "green", "cube", "table", "bird"]


def _image():
    image = Image.new("RGB", (WIDTH, HEIGHT), (200, 30, 30))
    image.paste((20, 20, 220), (50, 10, 80, 40))
    return image


@pytest.fixture(scope="module")
def grounding_dino_dir(tmp_path_factory):
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
    )
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    torch.manual_seed(0)
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "window_size": 7,
            "embed_dim": 8,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
            "image_size": 64,
            "out_indices": [2, 3, 4],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": 32,
            "hidden_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 8,
            "max_position_embeddings": 64,
        },
        d_model=32,  # GroupNorm(32, d_model) in the input projections
        encoder_layers=1,
        decoder_layers=2,  # the bbox-head tying needs at least two decoder layers
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=8,
        decoder_ffn_dim=8,
        num_queries=12,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=16,  # small, so that a long phrase list needs several prompts
    )
    model = GroundingDinoForObjectDetection(config)
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS])}
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(size={"shortest_edge": 48, "longest_edge": 96}),
        tokenizer=BertTokenizer(vocab=vocab),
    )
    path = tmp_path_factory.mktemp("grounding-dino")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory):
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    torch.manual_seed(0)
    # Character-level BPE vocab (no merges). OWLv2 pools the text at the highest token id and treats a query whose
    # first token id is 0 as padding, so the special tokens go last, as in CLIP's vocab.
    vocab = {"!": 0}
    for char in string.ascii_lowercase + ".'":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    config = Owlv2Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": len(vocab) - 2,
            "eos_token_id": len(vocab) - 1,
            "pad_token_id": len(vocab) - 1,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():  # random init (std ~1) saturates the box head: every box would collapse into the padding
        for parameter in model.box_head.parameters():
            parameter.mul_(0.01)
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16),
    )
    path = tmp_path_factory.mktemp("owlv2")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def grounding_dino(grounding_dino_dir):
    return DetectorProposer.from_pretrained(grounding_dino_dir)


@pytest.fixture(scope="module")
def owlv2(owlv2_dir):
    return DetectorProposer.from_pretrained(owlv2_dir)


def _with(proposer, **options):
    # A proposer on the same loaded model with other options.
    return DetectorProposer(proposer.model, proposer.processor, **options)


def _force_outputs(model, logits_fn, boxes):
    # Overwrite the detector's raw outputs, so that the expected proposals are known exactly.
    def hook(module, args, kwargs, output):
        output["logits"] = logits_fn(output.logits)
        pred_boxes = output.pred_boxes.clone()
        pred_boxes[0, : len(boxes)] = torch.tensor(boxes)
        output["pred_boxes"] = pred_boxes
        return output

    return model.register_forward_hook(hook, with_kwargs=True)


def _check_inside(proposals_, phrases):
    for proposal in proposals_:
        x0, y0, x1, y1 = proposal.box
        assert 0 <= x0 < x1 <= WIDTH and 0 <= y0 < y1 <= HEIGHT, proposal
        assert 0 <= proposal.score <= 1
        assert proposal.phrase in phrases


# ---- NMS ------------------------------------------------------------------------------------------------------------


def test_box_iou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [3.0, 3.0, 3.0, 3.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1.0, 50 / 150, 0.0, 0.0]]))


def test_nms_removes_overlapping_duplicate():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [1.0, 1.0, 10.0, 10.0]])
    scores = torch.tensor([0.6, 0.7, 0.9])
    assert nms(boxes, scores, 0.5).tolist() == [2, 1]  # box 0 overlaps the better box 2 (IoU 0.81)
    assert nms(boxes, scores, 0.9).tolist() == [2, 1, 0]
    assert nms(boxes, scores, 0.5, groups=torch.tensor([0, 0, 1])).tolist() == [2, 1, 0]  # other phrase: kept
    assert nms(torch.zeros(0, 4), torch.zeros(0)).tolist() == []


def test_nms_bad_shapes():
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3))


# ---- GroundingDINO --------------------------------------------------------------------------------------------------


def test_grounding_dino_defaults(grounding_dino):
    assert isinstance(grounding_dino, RegionProposer)
    assert (grounding_dino.family, grounding_dino.threshold, grounding_dino.text_threshold) == (
        "grounding-dino",
        0.35,
        0.25,
    )
    assert grounding_dino.nms_iou == 0.5 and grounding_dino.top_k is None


def test_grounding_dino_threshold_zero_and_one(grounding_dino):
    phrases = ["cat", "Red Plate"]
    found = _with(grounding_dino, threshold=0.0, text_threshold=0.0, nms_iou=None)(_image(), phrases)
    assert len(found) >= 1
    _check_inside(found, phrases)
    assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)
    assert _with(grounding_dino, threshold=1.0, text_threshold=0.0)(_image(), phrases) == []


def test_grounding_dino_pixel_boxes_and_phrases(grounding_dino):
    # Query 0 matches "cat" (token 1), query 1 "Red Plate" (token 4: "plate"), query 2 only the period (token 2):
    # its box passes the box threshold but has no phrase above the text threshold.
    # Prompt: [CLS] cat . red plate . [SEP]
    def logits_fn(logits):
        forced = torch.full_like(logits, -10.0)
        forced[0, 0, 1] = forced[0, 1, 4] = forced[0, 2, 2] = 10.0
        return forced

    boxes = [[0.25, 0.25, 0.2, 0.2], [0.75, 0.5, 0.2, 0.6], [0.5, 0.5, 0.1, 0.1]]  # (cx, cy, w, h), relative
    handle = _force_outputs(grounding_dino.model, logits_fn, boxes)
    try:
        found = grounding_dino(_image(), ["cat", "Red Plate"])
    finally:
        handle.remove()
    assert [p.phrase for p in found] == ["cat", "Red Plate"]
    torch.testing.assert_close(torch.tensor(found[0].box), torch.tensor([13.5, 7.5, 31.5, 17.5]))  # x * 90, y * 50
    torch.testing.assert_close(torch.tensor(found[1].box), torch.tensor([58.5, 10.0, 76.5, 40.0]))
    assert found[0].score == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())


def test_grounding_dino_nms_and_top_k(grounding_dino):
    phrases = ["cat", "dog", "red plate"]
    everything = _with(grounding_dino, threshold=0.0, text_threshold=0.0, nms_iou=None)(_image(), phrases)
    suppressed = _with(grounding_dino, threshold=0.0, text_threshold=0.0, nms_iou=0.5)(_image(), phrases)
    assert len(suppressed) <= len(everything)
    ious = box_iou(torch.tensor([p.box for p in suppressed]), torch.tensor([p.box for p in suppressed]))
    assert (ious.triu(diagonal=1) <= 0.5).all()
    per_phrase = _with(grounding_dino, threshold=0.0, text_threshold=0.0, nms_across_phrases=False)(_image(), phrases)
    assert len(suppressed) <= len(per_phrase) <= len(everything)
    top1 = _with(grounding_dino, threshold=0.0, text_threshold=0.0, nms_iou=None, top_k=1)(_image(), phrases)
    assert sorted(p.phrase for p in top1) == sorted({p.phrase for p in everything})


def test_grounding_dino_long_phrase_list_is_chunked(grounding_dino):
    phrases = ["cat", "dog", "red plate", "cup", "blue ball", "green cube", "table", "bird"]
    chunks = grounding_dino._grounding_dino_chunks(phrases)
    assert len(chunks) > 1 and [p for chunk in chunks for p in chunk] == phrases
    found = _with(grounding_dino, threshold=0.0, text_threshold=0.0, nms_iou=None)(_image(), phrases)
    _check_inside(found, phrases)
    assert len({p.phrase for p in found} - set(chunks[0])) > 0  # later prompts were run too


def test_grounding_dino_empty_phrases(grounding_dino):
    assert grounding_dino(_image(), []) == []
    assert grounding_dino(_image(), ["", " . "]) == []


# ---- OWLv2 ----------------------------------------------------------------------------------------------------------


def test_owlv2_defaults(owlv2):
    assert (owlv2.family, owlv2.threshold, owlv2.nms_iou) == ("owl", 0.1, 0.5)


def test_owlv2_threshold_zero_and_one(owlv2):
    phrases = ["cat", "red plate"]
    found = _with(owlv2, threshold=0.0, nms_iou=None)(_image(), phrases)
    assert len(found) >= 1
    _check_inside(found, phrases)
    assert _with(owlv2, threshold=1.0)(_image(), phrases) == []


def test_owlv2_pixel_boxes_and_phrases(owlv2):
    # OWLv2 sees the image padded to a 90 x 90 square: relative boxes scale by 90 on both axes, then are clipped.
    def logits_fn(logits):
        forced = torch.full_like(logits, -10.0)
        forced[0, 0, 1] = forced[0, 1, 0] = 10.0  # query 0 -> "red plate", query 1 -> "cat"
        forced[0, 2, 0] = 5.0  # a near duplicate of query 1, removed by NMS
        return forced

    boxes = [[0.25, 0.25, 0.2, 0.2], [0.75, 0.5, 0.2, 0.4], [0.75, 0.5, 0.2, 0.38], [0.5, 0.9, 0.1, 0.1]]
    handle = _force_outputs(owlv2.model, logits_fn, boxes)
    try:
        found = owlv2(_image(), ["cat", "red plate"])
    finally:
        handle.remove()
    assert [p.phrase for p in found] == ["red plate", "cat"]
    torch.testing.assert_close(torch.tensor(found[0].box), torch.tensor([13.5, 13.5, 31.5, 31.5]))
    torch.testing.assert_close(torch.tensor(found[1].box), torch.tensor([58.5, 27.0, 76.5, 50.0]))  # y1 63 -> 50


def test_owlv2_pad_and_resize_geometry():
    resized = proposals._owlv2_pad_and_resize(_image(), {"height": 32, "width": 32})
    assert resized.size == (32, 32)
    assert resized.getpixel((2, 2)) == (200, 30, 30)
    assert resized.getpixel((16, 30)) == (0, 0, 0)  # below the image: padding


# ---- registry and propose_regions -----------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(proposals, "PROPOSERS", dict(proposals.PROPOSERS))
    return proposals.PROPOSERS


def test_propose_regions_through_registry(grounding_dino_dir, owlv2_dir):
    text = "What colour is the cup left of the red plate?"
    for detector, path in (("grounding-dino", grounding_dino_dir), ("owlv2", owlv2_dir)):
        found = propose_regions(_image(), text, detector=detector, model=str(path), threshold=0.0, text_threshold=0.0)
        assert len(found) >= 1
        _check_inside(found, ["cup", "red plate"])


def test_register_exact_proposer(registry):
    calls = []

    def exact(**kwargs):
        def proposer(image, phrases):
            calls.append((image.size, phrases, kwargs))
            return [Proposal((0.0, 0.0, 4.0, 4.0), 1.0, phrase) for phrase in phrases]

        return proposer

    register_proposer("exact", exact)
    found = propose_regions(_image(), "Is the cat on the table?", detector="exact")
    assert [p.phrase for p in found] == ["cat", "table"]
    assert calls == [((WIDTH, HEIGHT), ["cat", "table"], {})]
    propose_regions(_image(), ["cat"], detector="exact", threshold=0.3)
    assert calls[-1][2] == {"threshold": 0.3}  # only the options the caller set
    with pytest.raises(ValueError, match="exact"):
        register_proposer("exact", exact)
    register_proposer("exact", "vcontrast.crg.proposals:load_owlv2", overwrite=True)
    assert registry["exact"] == "vcontrast.crg.proposals:load_owlv2"


def test_propose_regions_with_proposer_instance(owlv2):
    proposer = _with(owlv2, threshold=0.0)
    assert propose_regions(_image(), "", detector=proposer) == []
    assert len(propose_regions(_image(), ["cup"], detector=proposer)) >= 1
    with pytest.raises(ValueError, match="threshold"):
        propose_regions(_image(), ["cup"], detector=proposer, threshold=0.5)


def test_bad_input(grounding_dino, owlv2):
    for threshold in (-0.1, 1.5, math.nan, "0.3", True):
        with pytest.raises(ValueError, match="threshold"):
            _with(grounding_dino, threshold=threshold)
    with pytest.raises(ValueError, match="text_threshold"):
        _with(grounding_dino, text_threshold=2.0)
    with pytest.raises(ValueError, match="top_k"):
        _with(owlv2, top_k=0)
    with pytest.raises(ValueError, match="nms_iou"):
        _with(owlv2, nms_iou=-1)
    with pytest.raises(ValueError, match="unknown proposer"):
        get_proposer("yolo")
    with pytest.raises(TypeError, match="image"):
        owlv2(torch.zeros(3, 8, 8), ["cat"])
    with pytest.raises(TypeError, match="phrases"):
        owlv2(_image(), "cat")
    with pytest.raises(TypeError, match="detector"):
        propose_regions(_image(), ["cat"], detector=3)

    class NotADetector:
        class config:
            model_type = "llava"

    with pytest.raises(ValueError, match="llava"):
        DetectorProposer(NotADetector(), None)


# ---- proposer objects -----------------------------------------------------------------------------------------------


def test_named_proposer_objects(grounding_dino_dir, owlv2_dir):
    from vcontrast.crg.proposals import GroundingDinoProposer, Owlv2Proposer

    dino = GroundingDinoProposer(grounding_dino_dir, threshold=0.0, text_threshold=0.0)
    assert (dino.threshold, dino.text_threshold, dino.top_k) == (0.0, 0.0, 1)  # one box per phrase by default
    found = dino(_image(), ["cat", "red plate"])
    assert 1 <= len(found) <= 2 and len({p.phrase for p in found}) == len(found)
    every = dino.with_options(top_k=None, nms_iou=None)
    assert every.model is dino.model and len(every(_image(), ["cat", "red plate"])) > len(found)
    owl = Owlv2Proposer(owlv2_dir, threshold=0.0)
    assert owl.family == "owl" and owl.top_k == 1 and len(owl(_image(), ["cup"])) == 1
    with pytest.raises(ValueError, match="not grounding-dino"):
        GroundingDinoProposer(owlv2_dir)
    with pytest.raises(ValueError, match="unknown proposer options"):
        dino.with_options(box=1)
    assert isinstance(get_proposer("owlv2", model=owlv2_dir), Owlv2Proposer)  # names build the same classes


def test_propose_regions_top_k_none_keeps_all(grounding_dino_dir):
    options = {"threshold": 0.0, "text_threshold": 0.0, "nms_iou": 1.0, "model": grounding_dino_dir}
    every = propose_regions(_image(), ["cat", "dog"], detector="grounding-dino", top_k=None, **options)
    assert max(sum(p.phrase == phrase for p in every) for phrase in ("cat", "dog")) > 1
    best = propose_regions(_image(), ["cat", "dog"], detector="grounding-dino", **options)  # the named default: 1
    assert len(best) == len({p.phrase for p in best}) < len(every)


def test_missing_or_empty_detector_folder(tmp_path, monkeypatch):
    from vcontrast.cli import is_user_error

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for name, needle in [
        ("./missing", "'./missing' does not exist"),
        (str(tmp_path / "missing"), "does not exist"),
        ("empty", "'empty' has no config.json"),
    ]:
        for load in (proposals.load_owlv2, proposals.load_grounding_dino):
            with pytest.raises(ValueError, match=needle) as error:
                load(name)
            assert is_user_error(error.value) and isinstance(error.value.__cause__, FileNotFoundError)


def test_crg_builds_a_named_proposer_once(monkeypatch):
    from tests import tiny_models as tm
    from vcontrast.crg import CRG

    built = []

    def factory(**kwargs):
        built.append(kwargs)
        return lambda image, phrases: [Proposal((2.0, 2.0, 12.0, 10.0), 0.9, p) for p in phrases]

    monkeypatch.setitem(proposals.PROPOSERS, "counting", factory)
    model, processor = tm.build("llava")
    crg = CRG(model, processor, proposer="counting")
    prompt = "which colour is the cup left of the plate ?"
    for _ in range(3):
        crg.score(tm.image(0), prompt, ["red", "blue"])
    assert len(built) == 1
    with pytest.raises(ValueError, match="proposer"):
        CRG(model, processor, proposer=3)


def test_owlv2_without_scipy_warns_once(owlv2, monkeypatch, caplog):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_scipy_available", lambda: False)
    monkeypatch.setattr(proposals, "_SCIPY_WARNED", [])
    with caplog.at_level("WARNING", logger="vcontrast.crg.proposals"):
        owlv2(_image(), ["cup"])
        owlv2(_image(), ["cat"])
    # the PIL image processor needs scipy (vcontrast resizes instead, and says so); the torchvision one does not
    expected = 1 if image_backend_of(owlv2.processor) == "pil" else 0
    assert sum("scipy is not installed" in r.getMessage() for r in caplog.records) == expected


# ---- image backend --------------------------------------------------------------------------------------------------


def test_detectors_load_the_image_backend_asked_for(grounding_dino_dir, owlv2_dir):
    from tests.models.test_image_backend import HAS_TORCHVISION
    from vcontrast.crg.proposals import GroundingDinoProposer

    for proposer in (
        DetectorProposer.from_pretrained(owlv2_dir, image_backend="pil"),
        GroundingDinoProposer(grounding_dino_dir, image_backend="pil"),
        get_proposer("owlv2", model=owlv2_dir, image_backend="pil"),
    ):
        assert image_backend_of(proposer.processor) == "pil"
    with pytest.raises(ValueError, match="image backend 'opencv' is not one of"):
        DetectorProposer.from_pretrained(owlv2_dir, image_backend="opencv")
    if HAS_TORCHVISION:
        assert image_backend_of(get_proposer("owlv2", model=owlv2_dir, image_backend="torchvision").processor) == (
            "torchvision"
        )
    else:
        with pytest.raises(ValueError, match="torchvision"):
            get_proposer("grounding-dino", model=grounding_dino_dir, image_backend="torchvision")


def test_an_eval_method_loads_its_detector_with_the_vlms_image_backend(owlv2_dir, registry, tmp_path, monkeypatch):
    # The runner records and pins the VLM's image backend; a built-in detector the method loads follows it, so that
    # a run's proposals do not change backend with the machine either. A registered proposer gets no such argument.
    from tests import tiny_models as tm
    from vcontrast.bench.methods import get_method

    model, processor = tm.build("llava")
    given = []

    def recording(factory):
        def build(**kwargs):
            given.append(kwargs)
            return factory(**kwargs)

        return build

    registry["owlv2"] = recording(proposals.load_owlv2)
    monkeypatch.setitem(proposals.DEFAULT_CHECKPOINTS, "owlv2", str(owlv2_dir))  # offline: no hub download
    registry["exact-test"] = recording(lambda **kwargs: lambda image, phrases: [])
    method = get_method("crg", model, processor, proposer="owlv2", proposer_model=str(owlv2_dir))
    method.propose(_image(), ["cup"])
    assert given[-1]["image_backend"] == image_backend_of(processor) == "pil"
    assert image_backend_of(method._built_proposer.processor) == "pil"
    get_method("crg", model, processor, proposer="exact-test").propose(_image(), ["cup"])
    assert "image_backend" not in given[-1]
    from vcontrast.crg import CRG  # the same rule for CRG given a proposer by name

    CRG(model, processor, proposer="owlv2")._get_proposer()
    assert given[-1] == {"image_backend": "pil"}
    # an unreadable checkpoint still says how to go on; a wrong backend is not taken for one
    missing = get_method("crg", model, processor, proposer="owlv2", proposer_model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot load the region proposer .*--proposer none"):
        missing.propose(_image(), ["cup"])
    registry["owlv2"] = lambda **kwargs: proposals.load_owlv2(**{**kwargs, "image_backend": "opencv"})
    with pytest.raises(ValueError, match="image backend 'opencv'") as error:
        get_method("crg", model, processor, proposer="owlv2", proposer_model=str(owlv2_dir)).propose(_image(), ["c"])
    assert "cannot load the region proposer" not in str(error.value)
