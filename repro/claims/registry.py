"""The claims registry: one entry per checkable claim in the LLM claims catalogue (docs/claims.md), and
the blog post's own arithmetic (``rn-blog-*``, the post's claims rather than an assistant's).

Keys are the catalogue's ids; where one row covers several assistants with different answers,
each answer is its own entry ``<catalogue id>/<assistant>`` so every answer gets a verdict.
``checker`` is the checking function itself, so an editor goes from an entry to its code.
Which module holds the checker follows from the id (the longest prefix wins;
tests/test_claims_registry.py holds every entry to this table):

    q1*, q3b*, q3c*   checkers/mup.py          dense-layer RMS norms, μP scalings (Monte Carlo)
    q3a*              checkers/mup_sweep.py    TP5 Fig. 1 by a small SP-vs-μP LR sweep
    q4*               checkers/estimators.py   score-function vs reparameterisation estimators
    q5*               checkers/remat.py        rematerialisation counted on a 10-layer model
    pca*, ae*         checkers/pca.py          PCA critical points, the regularised autoencoder
    mt*               checkers/mt.py           decoder inputs with and without teacher forcing
    rn-3x, rn-learn1, checkers/blog.py         the post-1 text and its own arithmetic
      rn-blog*
    rn-rec*           checkers/records.py      the records' published accuracy, time, FLOPs and statistics
    rn*               checkers/resnet.py       the blog's stage times and the run records
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .checkers import blog, estimators, mt, mup, mup_sweep, pca, records, remat, resnet
from .checkers.common import Context, Finding

LECHAT_HW3 = "000_4252fa316c3fc423.txt"
GROK = "001_2e60a3b4466476d6.txt"
CHATGPT = "002_767f7bca2076f632.txt"
GEMINI = "003_a98960079fc0cf70.txt"
LECHAT_HW7 = "004_2ca81225e9ca24a0.txt"
ALL_HW3 = f"{LECHAT_HW3}, {GROK}, {CHATGPT}, {GEMINI}"


@dataclass(frozen=True)
class Claim:
    id: str
    transcript: str
    assistant: str
    quote: str
    claimed: str
    checker: Callable[["Claim", Context], Finding]
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def catalogue_id(self) -> str:
        return self.id.split("/", 1)[0]


def _c(id, transcript, assistant, quote, claimed, checker, **params):
    return Claim(id, transcript, assistant, quote, claimed, checker, params)


SQ = "d1 + (2/pi) d1 (d1-1)"
BLOG = "blog (D. Page)"


def _record_claims() -> tuple[Claim, ...]:
    """Each record stage's published accuracy, time and FLOPs (its ``[source]``, where the record
    states them), and hiverge's statistics: the records' claims rather than an assistant's."""
    from repro.resnet.config import load_ladders, load_stage

    claims = []
    for stage in load_ladders()["records"]:
        source = load_stage(stage).source
        who, where = f"record ({stage.split('9')[0]})", f"{stage}'s [source]"
        claims.append(_c(f"rn-rec-{stage}-acc", where, who, f"{100 * source.accuracy:g}% mean over {source.runs} runs",
                         f"{100 * source.accuracy:g}%", records.published_accuracy, stage=stage))
        claims.append(_c(f"rn-rec-{stage}-time", where, who, f"{source.seconds:g} s on an {source.hardware}",
                         f"{source.seconds:g} s", records.published_time, stage=stage))
        if source.pflops:
            claims.append(_c(f"rn-rec-{stage}-flops", where, who, f"{source.pflops:g} PFLOP per run",
                             f"{source.pflops:g} P", records.published_flops, stage=stage))
    hiverge = "hiverge/cifar10-speedrun README"
    claims += [
        _c("rn-rec-hiverge94-p", hiverge, "record (hiverge)", "one-sided t-test against 94%: p = 0.0034",
           "p = 0.0034", records.significance, stage="hiverge94", target=0.94, p=0.0034),
        _c("rn-rec-hiverge94-share", hiverge, "record (hiverge)", "54.7% of the 2000 runs reach 94%",
           "54.7%", records.share_at_target, stage="hiverge94", target=0.94, share=0.547),
    ]
    return tuple(claims)


CLAIMS: tuple[Claim, ...] = (
    # ---- HW3 Q1: dense layer at init and after SignGD
    _c("q1a-rms", ALL_HW3, "Le Chat, Grok, ChatGPT, Gemini", "E‖Wx‖²_RMS = d1; linear in d1, independent of d2",
       "d1", mup.init_rms),
    _c("q1a-const", ALL_HW3, "Le Chat, Grok, ChatGPT, Gemini", "multiply W by 1/√d1", "E‖(W/√d1)x‖²_RMS = 1",
       mup.init_rms, constant="1/sqrt(d1)"),
    _c("q1a-gauss", f"{LECHAT_HW3}; {GROK}", "Le Chat, Grok", "y_j ~ N(0, d1) (W_i x_i i.i.d. N(0,1))",
       "excess kurtosis 0", mup.gaussian_output),
    _c("q1b-exp-lechat", LECHAT_HW3, "Le Chat", "E‖y'‖²_RMS = d1 (sign is a random sign matrix independent of x)",
       "d1", mup.signgd_sq_rms, formula="d1"),
    _c("q1b-exp/grok", GROK, "Grok", "E‖y'‖²_RMS = d1 + (2/π)d1(d1−1)", SQ, mup.signgd_sq_rms, formula=SQ),
    _c("q1b-exp/chatgpt", CHATGPT, "ChatGPT", "E‖y'‖²_RMS = d1(1−2/π) + d1²(2/π)", "d1(1−2/π)+(2/π)d1²",
       mup.signgd_sq_rms, formula="d1 (1-2/pi) + d1^2 (2/pi)"),
    _c("q1b-exp/gemini", GEMINI, "Gemini", "E‖y'‖²_RMS = d1(1 + (d1−1)·2/π)", "d1(1+(d1−1)2/π)",
       mup.signgd_sq_rms, formula="d1 (1 + (d1-1) 2/pi)"),
    _c("q1b-scaling", f"{GROK}, {CHATGPT}, {GEMINI}", "Grok, ChatGPT, Gemini",
       "quadratic in d1 (~(2/π)d1²), no d2 dependence", "exponent 2, flat in d2", mup.signgd_scaling, d1_exponent=2),
    _c("q1b-scaling/lechat", LECHAT_HW3, "Le Chat", "linear in d1", "exponent 1", mup.signgd_scaling, d1_exponent=1),
    _c("q1b-scaling/chatgpt-rms", CHATGPT, "ChatGPT", "E‖y'‖_RMS = d1√(2/π)", "d1√(2/π)", mup.signgd_rms),
    _c("q1b-const/lechat", LECHAT_HW3, "Le Chat", "multiply the update by 1/√d1", "c = 1/√d1",
       mup.signgd_constant, constant="1/sqrt(d1)", target="rms"),
    _c("q1b-const/grok", GROK, "Grok", "c = √(π/2)/d1 makes E‖y'‖_RMS = 1", "c = √(π/2)/d1",
       mup.signgd_constant, constant="sqrt(pi/2)/d1", target="rms"),
    _c("q1b-const/chatgpt", CHATGPT, "ChatGPT", "c = 1/√(d1(1−2/π)+(2/π)d1²) (≈√(π/2)/d1), squared RMS = 1",
       "c = 1/√(E‖y'‖²_RMS)", mup.signgd_constant, constant="1/sqrt(d1(1-2/pi)+(2/pi)d1^2)", target="squared"),
    _c("q1b-const/chatgpt-approx", CHATGPT, "ChatGPT", "c = 1/√(d1(1−2/π)+(2/π)d1²) ≈ √(π/2)/d1",
       "ratio → 1", mup.constant_approximation, tolerance=0.02),
    _c("q1b-const/gemini", GEMINI, "Gemini", "(no constant given)", "—", mup.signgd_constant),
    _c("q1b-pathwise", f"{GROK}, {CHATGPT}", "Grok, ChatGPT", "y' = sign(g)·Σ|x_k| so ‖y'‖²_RMS = (Σ|x_k|)² per draw",
       "equal per draw", mup.signgd_pathwise),
    _c("q1b-gmag", CHATGPT, "ChatGPT", "if g has variable magnitudes add a factor ‖g‖²/d2", "factor ‖g‖²/d2",
       mup.signgd_g_magnitude),
    _c("q1c-why-d1", ALL_HW3, "Le Chat, Grok, ChatGPT, Gemini",
       "only d1 matters: every output row gets the same magnitude, RMS divides out d2", "flat in d2",
       mup.only_d1_matters),
    # ---- HW3 Q3: μP papers
    # One small MLP LR sweep (SP vs μP, Adam) shared by the four readings of TP5 Fig. 1.
    _c("q3a-fig1/grok", GROK, "Grok", "loss vs log2 LR across widths: SP optimum shifts, wider not always "
       "better; μP optimum stable, loss monotone in width", "SP argmin-LR shifts; μP stable, wider better",
       mup_sweep.fig1_reading, reading="full"),
    _c("q3a-fig1/chatgpt", CHATGPT, "ChatGPT", "loss vs log2 LR across widths: SP optimum shifts, wider not "
       "always better; μP optimum stable, loss monotone in width", "SP argmin-LR shifts; μP stable, wider better",
       mup_sweep.fig1_reading, reading="full"),
    _c("q3a-fig1/gemini", GEMINI, "Gemini", "SP optimal LR shifts with width, μP's stays (width question "
       "unanswered)", "SP argmin-LR shifts; μP stable", mup_sweep.fig1_reading, reading="shift-only"),
    _c("q3a-fig1/lechat", LECHAT_HW3, "Le Chat", "y-axis is norms; then \"loss vs width\"",
       "x-axis = width", mup_sweep.fig1_reading, reading="wrong-axes"),
    _c("q3b-table3/chatgpt", CHATGPT, "ChatGPT", "μP hidden Adam LR 1/fan_in, SP 1",
       "μP fan_in^-1, SP 1", mup.table3_lr, mup_exponent=-1, sp_exponent=0),
    _c("q3b-table3/grok", GROK, "Grok", "μP 1/√d, SP constant", "μP fan_in^-1/2, SP 1", mup.table3_lr,
       mup_exponent=-0.5, sp_exponent=0),
    _c("q3b-table3/lechat", LECHAT_HW3, "Le Chat", "μP 1/√fan_in, SP 1/fan_in", "μP fan_in^-1/2, SP fan_in^-1",
       mup.table3_lr, mup_exponent=-0.5, sp_exponent=-1),
    _c("q3b-table3/gemini", GEMINI, "Gemini", "SP Θ(1/fan_in), μP Θ(1)", "μP fan_in^0, SP fan_in^-1",
       mup.table3_lr, mup_exponent=0, sp_exponent=-1),
    _c("q3b-vanish", GEMINI, "Gemini", "SP LR Θ(1/fan_in) ⇒ RMS(Δh) ∝ 1/√fan_in → 0", "exponent −1/2",
       mup.update_vanishes, rms_exponent=-0.5),
    _c("q3c-desid", f"{GROK}, {CHATGPT}, {GEMINI}", "Grok, ChatGPT, Gemini",
       "Desideratum 1 ⇔ ‖h‖_RMS = Θ(1), ‖Δh‖_RMS = Θ(1)", "RMS exponent 0", mup.desideratum_rms, rms_exponent=0),
    _c("q3c-desid/lechat", LECHAT_HW3, "Le Chat", "first Θ(1) RMS, then ‖h‖_RMS = Θ(√n_ℓ), ‖Δh‖_RMS = Θ(√n_ℓ)",
       "RMS exponent 1/2", mup.desideratum_rms, rms_exponent=0.5, also_stated_correctly=True),
    _c("q3c-rmsrms", CHATGPT, "ChatGPT", "‖A‖_{RMS→RMS} = √(n_in/n_out)·‖A‖_*", "attained, never exceeded",
       mup.rms_operator_norm),
    _c("q3c-entryrms", CHATGPT, "ChatGPT", "entrywise ‖ΔW‖_RMS = Θ(1/√n_{ℓ−1})", "exponent −1/2",
       mup.entry_rms_rank_one, m_exponent=-0.5),
    _c("q3c-upper", f"{GROK}, {CHATGPT}", "Grok, ChatGPT", "‖Wh‖ ≤ ‖W‖_*‖h‖ + Condition 1 ⇒ ‖h_ℓ‖₂ ≤ Θ(√n_ℓ)",
       "‖ΔW‖_* ∝ √(n_ℓ/n_{ℓ−1})", mup.spectral_upper_bound, spectral_exponent=0.5),
    _c("q3c-upper/gemini", GEMINI, "Gemini", "Condition 1 specifies ‖ΔW‖_* = Θ(1)", "‖ΔW‖_* ∝ (n_ℓ/n_{ℓ−1})^0",
       mup.spectral_upper_bound, spectral_exponent=0.0),
    _c("q3c-lower/grok", GROK, "Grok", "need |⟨ĥ,v1⟩| = Θ(1), justified under randomness/isotropy",
       "|⟨ĥ,v1⟩| = Θ(1)", mup.lower_bound_assumption, mechanism="isotropic h aligned with top singular vector"),
    _c("q3c-lower/chatgpt", CHATGPT, "ChatGPT", "random W scales inputs ≈ by spectral norm; ΔW rank-1 aligned with h",
       "‖ΔWh‖ = ‖ΔW‖_*‖h‖", mup.lower_bound_assumption,
       mechanism="random W near spectral norm; update aligned with h"),
    _c("q3c-lower/gemini", GEMINI, "Gemini", "spectral alignment", "alignment (vague)",
       mup.lower_bound_assumption, mechanism="spectral alignment (not spelled out)"),
    _c("q3c-lower/lechat", LECHAT_HW3, "Le Chat", "inputs and weights random and independent",
       "independent rank-1 update acts Θ(1)", mup.lower_bound_assumption,
       mechanism="random independent inputs and weights"),
    # ---- HW3 Q4: score function vs reparameterisation
    _c("q4a-score", ALL_HW3, "Le Chat, Grok, ChatGPT, Gemini", "∇_μF = E_{x~p_μ}[f(x)(x−μ)/σ²]",
       "= analytic ∇F", estimators.score_gradient),
    _c("q4b-F", f"{LECHAT_HW3}, {CHATGPT}, {GEMINI}", "Le Chat, ChatGPT, Gemini", "F(μ) = E_{z~N(0,I)}[f(μ+σz)]",
       "= E_p f", estimators.objective_rewrite, answers="F"),
    _c("q4b-F/grok", GROK, "Grok", "∇F = E_z[f(μ+σz)z/σ] (instead of F)", "gradient identity",
       estimators.objective_rewrite, answers="gradient"),
    _c("q4c-reparam", f"{LECHAT_HW3}, {CHATGPT}, {GEMINI}", "Le Chat, ChatGPT, Gemini", "∇_μF = E_z[∇f(μ+σz)]",
       "RP estimator", estimators.reparam_gradient, estimator="reparameterisation"),
    _c("q4c-reparam/grok", GROK, "Grok", "∇F = E_{x~p_{μ=0}}[f(μ+x)x/σ²]", "RP estimator",
       estimators.reparam_gradient, estimator="shifted score"),
    _c("q4c-stein", CHATGPT, "ChatGPT", "the RP gradient equals the score gradient of part (a)", "equal means",
       estimators.stein_identity),
    _c("q4d-score", ALL_HW3, "Le Chat, Grok, ChatGPT, Gemini", "∇_θF = E_{p_θ}[f(x)∇_θ log p_θ(x)]",
       "= analytic ∇F", estimators.score_general_family),
    _c("q4d-baseline", CHATGPT, "ChatGPT", "a baseline b independent of x keeps the expectation, often lower variance",
       "unbiased, lower variance", estimators.baseline_variance),
    _c("q4d-var", GEMINI, "Gemini", "the score (PG) estimator's disadvantage is high variance",
       "Var(PG) > Var(RP)", estimators.score_variance_vs_dimension),
    _c("q4e-general", f"{LECHAT_HW3}, {GROK}, {CHATGPT}", "Le Chat, Grok, ChatGPT",
       "∇_θF = E_z[(∇_θg)ᵀ∇_x f(g(z,θ))]; special case g = μ+σz, p(z) = N(0,I)", "= analytic ∇F",
       estimators.general_reparameterisation, special_case_sigma="sigma"),
    _c("q4e-general/gemini", GEMINI, "Gemini", "general formula; special case x ~ N(μ, I) (σ dropped)",
       "= analytic ∇F; special case N(μ,I)", estimators.general_reparameterisation, special_case_sigma="one"),
    # ---- HW3 Q5: rematerialisation
    _c("q5a-fwd", f"{LECHAT_HW3}, {GROK}, {CHATGPT}", "Le Chat, Grok, ChatGPT", "20 fwd ops in one backward pass",
       "20", remat.rematerialisation, quantity="fwd", value=20),
    _c("q5a-fwd/grok-iteration", GROK, "Grok", "30 fwd ops per iteration, including the initial 10", "30",
       remat.rematerialisation, quantity="fwd_iteration", value=30),
    _c("q5a-fwd/gemini", GEMINI, "Gemini", "n·L(L−1)/2 fwd ops (= 45 for L=10, n=1)", "45",
       remat.rematerialisation, quantity="fwd", value=45),
    _c("q5b-loadmem/grok", GROK, "Grok", "10 loadmem", "10", remat.rematerialisation, quantity="loadmem", value=10),
    _c("q5b-loadmem/chatgpt-1st", CHATGPT, "ChatGPT", "2 loadmem (activations reused), first answer", "2",
       remat.rematerialisation, quantity="loadmem", value=2),
    _c("q5b-loadmem/chatgpt-2nd", CHATGPT, "ChatGPT", "10 loadmem, after the re-prompt", "10",
       remat.rematerialisation, quantity="loadmem", value=10),
    _c("q5b-loadmem/lechat", LECHAT_HW3, "Le Chat", "11 loadmem", "11", remat.rematerialisation,
       quantity="loadmem", value=11),
    _c("q5b-loadmem/gemini", GEMINI, "Gemini", "0 loadmem", "0", remat.rematerialisation, quantity="loadmem",
       value=0),
    _c("q5c-disk", f"{GROK}, {CHATGPT}", "Grok, ChatGPT", "t = (20·20 + 10·10)/10 = 50 ns", "50 ns",
       remat.rematerialisation, quantity="disk_ns", value=50),
    _c("q5c-disk/lechat", LECHAT_HW3, "Le Chat", "510/11 = 46.36 ns", "46.36 ns", remat.rematerialisation,
       quantity="disk_ns", value=510 / 11),
    _c("q5c-disk/gemini", GEMINI, "Gemini", "(L−1)·10 ns = 90 ns", "90 ns", remat.rematerialisation,
       quantity="disk_ns", value=90),
    # ---- HW7 Q3: PCA and the linear autoencoder
    _c("pca-foc", LECHAT_HW7, "Le Chat", "∂L/∂W2 = −2(X−W2W1X)XᵀW1ᵀ, ∂L/∂W1 = −2W2ᵀ(X−W2W1X)Xᵀ",
       "= autograd", pca.first_order_conditions),
    _c("pca-foc/summary-eq1", LECHAT_HW7, "Le Chat", "summary eq. (1): W2W1XXᵀ = XXᵀW1ᵀ", "well-formed equation",
       pca.summary_equation),
    _c("pca-foc-2", LECHAT_HW7, "Le Chat", "d/dW1 tr(XᵀW1ᵀW2ᵀW2W1X) = 2W1XXᵀW2ᵀW2", "= autograd",
       pca.step_by_step_gradient),
    _c("pca-opt", LECHAT_HW7, "Le Chat", "W1 = U_kᵀ, W2 = U_k satisfy both conditions", "zero gradient",
       pca.pca_is_critical),
    _c("pca-false-id", LECHAT_HW7, "Le Chat", "U_kᵀXXᵀU_k = U_kᵀXXᵀ (Σ_k² = U_kᵀXXᵀ, true by definition)",
       "identity holds", pca.false_identity),
    _c("ae-layers", LECHAT_HW7, "Le Chat", "2 linear layers (encoder W1, decoder W2)", "2", pca.two_linear_layers),
    _c("ae-loss", LECHAT_HW7, "Le Chat", "nn.MSELoss, ℓ2 terms via the optimizer's weight decay",
       "MSELoss + weight decay", pca.mse_plus_weight_decay),
    _c("ae-comp", LECHAT_HW7, "Le Chat", "needed: weight decay + SGD; not dropout/LayerNorm/BatchNorm",
       "WD + SGD reaches the minimiser", pca.components_needed),
    _c("ae-ortho", LECHAT_HW7, "Le Chat", "small λ>0 ⇒ W2 has ≈ orthonormal columns", "W2ᵀW2 → I as λ → 0",
       pca.orthonormal_decoder),
    # ---- HW7 machine translation
    _c("mt-train", LECHAT_HW7, "Le Chat", "teacher forcing inputs: ⟨sos⟩, I, see, a, dog", "⟨sos⟩ I see a dog",
       mt.decoder_inputs, mode="train", tokens=("<sos>", "I", "see", "a", "dog")),
    _c("mt-eval", LECHAT_HW7, "Le Chat", "eval inputs: ⟨sos⟩, I, saw, a, dog", "⟨sos⟩ I saw a dog",
       mt.decoder_inputs, mode="eval", tokens=("<sos>", "I", "saw", "a", "dog")),
    # ---- HW7 Q4: How to Train Your ResNet
    # stage_reports: what the answer says a ladder stage took and reached, (seconds, accuracy); the ladder
    # table and the report show them beside the measured and the source's numbers (``stage_reports``)
    _c("rn-hallu", LECHAT_HW7, "Le Chat", "baseline ~18 hours, ~68%; final ~35 minutes, ~76% (ImageNet ResNet-50)",
       "18 h/68% → 35 min/76%", resnet.hallucinated_numbers,
       stage_reports={"baseline": (18 * 3600, 0.68), "final": (35 * 60, 0.76)}),
    _c("rn-3x", LECHAT_HW7, "Le Chat", "mixed precision gave a 3x speedup with minimal loss in accuracy",
       "3× faster", blog.mixed_precision_speedup, factor=3.0),
    _c("rn-learn1", LECHAT_HW7, "Le Chat", "key learnings: smaller batch sizes, gradient checkpointing, "
       "reproducibility", "all three in the post", blog.key_learnings,
       stems={"smaller batch sizes": "smaller batch", "gradient checkpointing": "checkpointing",
              "reproducibility": "reproducib"}),
    _c("rn-retry-a", LECHAT_HW7, "Le Chat", "baseline 341 s (~6 min), 94%; final 297 s (~5 min), 94%",
       "341 s → 297 s, 94%", resnet.blog_ladder_endpoints,
       stage_reports={"baseline": (341, 0.94), "final": (297, 0.94)}),
    _c("rn-retry-b", LECHAT_HW7, "Le Chat", "removing the duplicate BN-ReLU reduced training time",
       "simplified < baseline", resnet.duplicate_bn_relu_saving),
    _c("rn-retry-c", LECHAT_HW7, "Le Chat",
       "data preprocessing/loading optimisations reduced the training time from 341 s to 297 s",
       "−44 s from data loading", resnet.preprocessing_attribution, claimed_saving_s=341 - 297),
    # ---- the post's own arithmetic (its claims, not an assistant's), as pasted in 004
    _c("rn-blog-flops", LECHAT_HW7, BLOG, "A forward and backward pass … on a 32×32 CIFAR10 image, requires "
       "approximately 2.8×10^9 FLOPs", "2.8e9 FLOP/image", blog.flops_per_image, flops=2.8e9, significant=2),
    _c("rn-blog-total", LECHAT_HW7, BLOG, "35 epochs of training on the 50,000 image dataset should complete in "
       "approximately 5×10^15 FLOPs", "2.8e9 × 50,000 × 35 ≈ 5e15", blog.training_flops,
       flops_per_image=2.8e9, images=50_000, total=5e15, significant=1),
    _c("rn-blog-40s", LECHAT_HW7, BLOG, "Tesla V100 delivers 125 TeraFLOPS … training should complete in... "
       "40 seconds", "5e15 / 125e12 ≈ 40 s", blog.peak_seconds, total=5e15, peak=125e12, seconds=40,
       significant=1),
    _c("rn-blog-per-epoch", LECHAT_HW7, BLOG, "a further 15s saving in training time (almost half a second per "
       "epoch!)", "15 s / 35 epochs ≈ 0.5 s", blog.saving_per_epoch, saving=15, almost=(0.4, 0.5)),
    _c("rn-blog-297", LECHAT_HW7, BLOG, "323s; a further 15s saving; shave a further 7s; save a further 4s … "
       "final training time for today of 297s", "323 − 15 − 7 − 4 = 297", blog.savings_add_up,
       start="simplified", savings=(("preprocessed", 15), ("bulk_rng", 7), ("final", 4))),
    # ---- the records' own claims (airbench, hiverge)
    *_record_claims(),
)
