"""Method cards of the bundled distillation losses (see :mod:`zsqbench.api.cards`).

``kd`` is each generator's own published student loss, so its card points at the generators'
cards; AKT and its two ablations (Table 4 of the AKT paper) share one source.
"""

from __future__ import annotations

from zsqbench.api import MethodCard, PublishedNumber

C10, C100 = "resnet20_cifar10", "resnet20_cifar100"
AKT_PAPER = "Advanced Knowledge Transfer: Refined Feature Distillation for Zero-Shot Quantization in Edge Computing"
AKT_CODE = "Inpyo-Hong/AKT-Advanced-knowledge-Transfer"
AKT_LICENSE = "none (no licence file in the repository); never copied"

AKT_DIFFERENCES = (
    "the feature loss is really applied: in the released code the RFD term is identically 0 (teacher feature "
    "list cleared before use, D3), and the trainer does not even import (D1) or reach its student step (D2); "
    "here teacher maps are kept detached, so the term is non-zero (a zero term with λ > 0 is a recorded warning)",
    "the code's choices are the defaults (entropy-of-difference logit loss, plain sum, sum over 9 maps, λ = 1000); "
    "the paper's are options (mode=paper, logit=kl, akt_alpha, map_reduction, taps=last_per_stage)",
    "the margin loss follows the batch size (D4: the code hard-codes 200); hooks hold no tensors after "
    "evaluation (D10, D11); no directory is deleted (D12)",
    "top1_last with mean ± std over seeds is the headline; the paper's best-epoch number is the oracle column",
)


def _table(source: str, rows: dict[tuple[str, str], float]) -> tuple[PublishedNumber, ...]:
    return tuple(PublishedNumber(model=m, bits=b, top1=v, source=source) for (m, b), v in rows.items())


AKT_CARD = MethodCard(
    method="AKT (RFD)",
    paper=AKT_PAPER,
    venue="paper of the AKT authors (venue not recorded in our specification)",
    code=AKT_CODE,
    commit="9f49af0",
    code_license=AKT_LICENSE,
    spec="docs/methods/akt.md",
    student_recipe="the generator's own loss + 1000·attention KL (spatial and channel); the generator's lr",
    differences=AKT_DIFFERENCES,
    published=_table("AKT paper, Tables 2 and 3 (AdaDFQ+AKT)", {
        (C10, "W3A3"): 86.76, (C10, "W4A4"): 92.64, (C10, "W5A5"): 93.83,
        (C100, "W3A3"): 54.68, (C100, "W4A4"): 66.94, (C100, "W5A5"): 69.75}),
    verified=(
        "spatial and channel attentions, their KL and the double softmax of the channel branch on hand-computed "
        "values (tests/plugins/test_feature_losses.py); the feature term is > 0 and its gradient reaches every unit conv",
        "AdaDFQ+AKT W4A4, CIFAR-10, cpu budget (8 epochs × 100 iterations × batch 64, warm-up 2), 2-core CPU: "
        "top1_last 87.77 % (seed 0) and 88.57 % (seed 1), PTQ 84.52 / 86.02 %",
    ),
)

def _ablation_card(branch: str, numbers: tuple[float, float, float], verified: str) -> MethodCard:
    """The card of one branch of RFD alone (AKT paper Table 4, AdaDFQ generator, CIFAR-10)."""
    return MethodCard(
        method=f"AKT ablation: {branch} attention only",
        paper=AKT_PAPER,
        venue=AKT_CARD.venue,
        code=AKT_CODE,
        commit="9f49af0",
        code_license=AKT_LICENSE,
        spec=f"docs/methods/{branch}.md",
        student_recipe=f"the generator's own loss + 1000·{branch}-attention KL; the generator's lr",
        differences=AKT_DIFFERENCES,
        published=_table("AKT paper, Table 4 (AdaDFQ; header lost, per the paper text)",
                         {(C10, f"W{b}A{b}"): v for b, v in zip((3, 4, 5), numbers)}),
        verified=(verified,),
    )


SPATIAL_CARD = _ablation_card("spatial", (86.10, 92.49, 93.75),
                              "spatial attention and its KL on hand-computed values (tests/plugins/test_feature_losses.py)")
CHANNEL_CARD = _ablation_card("channel", (86.09, 92.36, 93.62),
                              "channel attention (double softmax) and its KL on hand-computed values "
                              "(tests/plugins/test_feature_losses.py)")

KD_CARD = MethodCard(
    method="logit KD (each generator's native student loss)",
    paper="Distilling the Knowledge in a Neural Network (Hinton et al.), as each ZSQ paper adapts it",
    venue="NeurIPS 2014 workshop; the native forms are those of the generators' papers",
    code="none of its own: form=native runs the generator's published loss (see that generator's card)",
    code_license="n/a",
    spec="docs/methods/kd.md",
    student_recipe="the generator's own loss and lr (form=native; see its row)",
    differences=("form=kl is plain T²·KL with the batchmean reduction, for comparisons across generators",),
    verified=("GDFQ's KD-mean·T² + CE, AdaDFQ's entropy of the logit difference and HAST's KD + FA on hand "
              "values (tests/plugins/test_gdfq.py, tests/plugins/test_adadfq.py, tests/plugins/test_hast.py)",),
)

AIT_CARD = MethodCard(
    method="AIT (KL-only loss + gradient inundation)",
    paper="It's All In the Teacher: Zero-Shot Quantization Brought Closer to the Teacher",
    venue="CVPR 2022",
    code="iamkanghyunchoi/ait",
    commit="13a6c8c",
    code_license="GPL-3.0; never copied",
    spec="docs/methods/ait.md",
    student_recipe="KL only (400·KL_mean with GDFQ-family generators) with gradient inundation, weight decay 0; "
                   "the generator's lr",
    differences=(
        "the quantized weights come from the quantizer (22 tensors in ResNet-20), not from name substrings (T8)",
        "the step-size search is bounded (a ≤ 2^24) and skips all-zero directions: the official search hangs "
        "forever on them after epoch 5 (T1)",
        "the threshold p is derived from the epoch and checkpointed with the optimizer, so a resumed trial "
        "continues exactly (the official code restarts at p0, T4)",
        "a crash fails the trial (the official run loop swallows every exception and reports the best epoch, T7)",
        "weight decay 0 comes from the plugin's budget overrides (smoke, cpu, paper); with decay, it stays out of "
        "the search direction as in the code (T2); final: upper guarantees f(a) ≥ p (T3)",
        "for generators whose native loss is not KD + CE (AdaDFQ, HAST) the native loss is kept and only the "
        "step rule is added (no official numbers exist for those pairs)",
    ),
    published=_table("AIT README results figure (GDFQ+AIT)", {
        (C10, "W4A4"): 91.23, (C10, "W5A5"): 93.41, (C100, "W4A4"): 65.80, (C100, "W5A5"): 69.26}),
    verified=(
        "the search on hand-computed tensors (a = 66, bracket [66, 68] = a_d/64 after 5 rounds), momentum buffers "
        "equal torch SGD's, non-GI parameters bit-identical to SGD, realized code changes on all 22 tensors, "
        "zero-gradient tensors, resume, weight codes = the forward quantizer's integer stage (tests/plugins/test_ait.py)",
        "GDFQ+AIT, CIFAR-10 W3A3, cpu budget (8 epochs × 100 iterations × batch 64, warm-up 2), seeds 0 and 1, 2-core CPU: top1_last 50.50 ± 3.05 % vs GDFQ+kd 51.39 ± 1.22 % (paired −0.89, SE 3.02: no "
        "difference two seeds can show; results/methods-cpu-w3a3.csv)",
    ),
)
