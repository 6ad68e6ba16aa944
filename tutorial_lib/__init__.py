"""tutorial_lib: second-order machine unlearning for language models, the library behind the course.

The package is layered; each sub-package imports only from the ones before it:

- ``core``: profiles, data, tokenizers, models, training, evaluation, the cache, canaries, plots;
- ``curvature``: per-sample gradients, empirical Fisher structures, K-FAC, Newton steps, exact curvature;
- ``privacy``: exposure, membership inference and extraction, DP-SGD and its accounting;
- ``unlearning``: :func:`unlearn` and its method registry, evaluation against the retrained model,
  the Fisher across processes;
- ``experiments``: one module per study (memorisation, sweeps, benchmark, DP comparison, case
  studies, robustness, the full profile's plan);
- ``course``: the notebooks' set-up, the reproduction, cache warming and the instructor commands.

This module re-exports what the notebooks and a researcher use (:data:`__all__`); everything else stays
in its module. Nothing runs at import time.
"""
from ._version import __version__
from .core.cache import CheckpointMismatchError
from .core.canaries import Canary, RandomnessSpace, insert_canaries, make_canaries
from .core.data import CORPORA, DataError, corpus_path, load_corpus, verify_data
from .core.evaluation import compute_loss, compute_perplexity, tokenize_lines
from .core.models import ModelConfig, count_parameters, load_pretrained, make_model
from .core.smollm2 import PretrainedModelError, smollm2_path
from .core.plotting import (
    benchmark_selection,
    case_study_attacks,
    plot_benchmark_selection,
    plot_candidate_distribution,
    plot_case_study_attack,
    plot_exact_vs_estimate,
    plot_exposure_trajectory,
    plot_exposure_vs_insertions,
    plot_relearning_at,
    plot_seed_variation,
    plot_sweep_point,
    plot_tradeoff,
    plot_training_curve,
    plot_unlearning_methods,
    relearning_by_step,
    sweep_point,
    use_style,
)
from .core.profiles import BANDS, PROFILES, model_scale, resolve_device, resolve_profile
from .core.tokenization import make_byte_tokenizer, train_bpe_tokenizer
from .core.training import TrainConfig, TrainHistory, train_language_model
from .course.notebook import setup_notebook
from .curvature.fisher import BlockFisher, DenseFisher, DiagonalFisher, WoodburyFisher, make_fisher
from .curvature.ground_truth import (
    cosine,
    curvature_matrices,
    empirical_fisher,
    exact_hessian,
    gauss_newton,
    kfac_dense_check,
    loss_gradient,
    newton_fisher_cosine,
    preconditioned_descent,
    spectrum,
    true_fisher,
)
from .curvature.kfac import KFACFisher, structure_costs
from .curvature.memory import MemoryBudgetError
from .curvature.newton import (
    ConvexProblem,
    MLPProblem,
    NewtonConfig,
    certified_noise_std,
    fit,
    ihvp_cg,
    ihvp_exact,
    ihvp_lissa,
    influence_on_loss,
    make_corpus_classification,
    newton_removal,
    newton_step,
    perturb,
    retrain_without,
    solve_damped,
)
from .curvature.outputs import classifier_outputs, lm_outputs, make_lm_batch, regression_outputs, sample_losses
from .curvature.per_sample import ParameterSpace, gradient_matrix, per_sample_gradients, select_parameters
from .curvature.studies import damping_study, newton_removal_study, structure_costs_markdown, time_per_sample_gradients
from .experiments.benchmark import BenchmarkConfig, benchmark_markdown, cells_cached, method_name, plot_benchmark, run_benchmark
from .experiments.case_studies import (
    case_study_markdown,
    evaluate_pii,
    pii_verdicts,
    plot_case_study,
    run_case_study,
    train_case_study_model,
)
from .experiments.case_study_data import CaseStudyConfig, build_case_study
from .experiments.comparisons import (
    baseline_comparison,
    benchmark_claims,
    c3_claim,
    forgetting_gentler,
    other_canary_shift,
    sweep_markdown,
    unlearning_table,
)
from .experiments.dp_comparison import (
    DPComparisonConfig,
    c4_claim,
    canary_windows,
    dp_markdown,
    dp_study_cached,
    dp_versus_unlearning,
    plot_dp_vs_unlearning,
    run_dp_comparison,
    run_dp_study,
    train_dp_model,
)
from .experiments.full_profile import FullProfileError, FullProfilePlan, resolve_full_profile
from .experiments.memorization import (
    MemorizationConfig,
    MemorizationResult,
    prepare_memorization,
    run_memorization,
    train_memorization_model,
    train_retrained_model,
)
from .experiments.recommendations import (
    plot_relearning,
    plot_sensitivity,
    plot_sequential,
    recommendations,
    recommendations_markdown,
    relearning_markdown,
    sequential_markdown,
)
from .experiments.pretrained_llm import (
    PretrainedLLMConfig,
    pretrained_markdown,
    pretrained_plot_data,
    pretrained_summary,
    run_pretrained_study,
)
from .experiments.robustness import (
    RelearningConfig,
    RobustnessConfig,
    relearning_attack,
    relearning_texts,
    request_start,
    run_c3_study,
    run_relearning_study,
    run_seed_variation,
    run_sensitivity_study,
    run_sequential_study,
    sequential_summary,
)
from .experiments.sweeps import (
    UnlearningSetup,
    choose_setting,
    control_level,
    reference_points,
    run_baseline_sweep,
    run_forgetting_sweep,
    run_removal_sweep,
    sweep_unlearning,
    unlearning_setup,
)
from .privacy.dp import (
    DPConfig,
    epsilon_spent,
    group_privacy,
    noise_multiplier_for,
    train_dp_language_model,
    window_dataset,
)
from .privacy.exposure import (
    ExposureEstimate,
    ExposureResult,
    canary_texts,
    canary_trie,
    compute_exposure,
    estimate_exposure,
    exposure_from_scores,
)
from .privacy.trie import score_candidates_bruteforce, score_trie
from .privacy.mia import attack_scores, generate_continuations, longest_common_prefix, membership_inference, roc_auc, roc_curve, tpr_at_fpr
from .unlearning.api import METHODS, unlearn
from .unlearning.base import UnlearningError, UnlearningReport, canary_forget_items
from .unlearning.baselines import FineTuneConfig, GradientAscentConfig, GradientDifferenceConfig, NPOConfig
from .unlearning.distributed import world_info
from .unlearning.distributed_fisher import DistributedFisher
from .unlearning.evaluation import evaluate_unlearning
from .unlearning.fisher_methods import FisherForgettingConfig, FisherRemovalConfig, newton_equivalent_eta
from .unlearning.verdicts import Verdict, forget_quality, judge, judge_rows, privleak, secret_membership_auc

__all__ = [
    "__version__", "forget_quality", "judge", "method_name", "judge_rows", "newton_equivalent_eta", "privleak", "secret_membership_auc", "Verdict", "attack_scores", "BANDS", "baseline_comparison", "benchmark_claims", "benchmark_markdown", "benchmark_selection",
    "BenchmarkConfig", "BlockFisher", "build_case_study", "Canary", "canary_forget_items", "canary_texts",
    "c3_claim", "c4_claim", "canary_trie", "canary_windows", "case_study_attacks", "case_study_markdown", "CaseStudyConfig", "cells_cached", "certified_noise_std",
    "CheckpointMismatchError", "choose_setting", "control_level", "classifier_outputs", "compute_exposure", "compute_loss",
    "compute_perplexity", "ConvexProblem", "CORPORA", "corpus_path", "cosine", "count_parameters",
    "curvature_matrices", "damping_study", "DataError", "DenseFisher", "DiagonalFisher", "DistributedFisher",
    "dp_markdown", "dp_study_cached", "dp_versus_unlearning", "DPComparisonConfig", "DPConfig", "empirical_fisher",
    "epsilon_spent", "estimate_exposure", "evaluate_pii", "evaluate_unlearning", "exact_hessian",
    "exposure_from_scores", "ExposureEstimate", "ExposureResult", "FineTuneConfig", "FisherForgettingConfig",
    "FisherRemovalConfig", "fit", "forgetting_gentler", "FullProfileError", "FullProfilePlan", "gauss_newton",
    "generate_continuations", "longest_common_prefix", "gradient_matrix", "GradientAscentConfig", "GradientDifferenceConfig",
    "group_privacy", "ihvp_cg", "ihvp_exact", "ihvp_lissa", "influence_on_loss", "insert_canaries", "kfac_dense_check", "KFACFisher",
    "lm_outputs", "load_corpus", "load_pretrained", "loss_gradient", "make_byte_tokenizer", "make_canaries",
    "make_corpus_classification", "make_fisher", "make_lm_batch", "make_model", "membership_inference",
    "MemorizationConfig", "MemorizationResult", "MemoryBudgetError", "METHODS", "MLPProblem", "model_scale",
    "ModelConfig", "newton_fisher_cosine", "newton_removal", "newton_removal_study", "newton_step", "NewtonConfig",
    "noise_multiplier_for", "NPOConfig", "other_canary_shift", "ParameterSpace", "per_sample_gradients", "perturb",
    "pii_verdicts", "plot_benchmark", "plot_benchmark_selection", "plot_candidate_distribution", "plot_case_study",
    "plot_case_study_attack", "plot_dp_vs_unlearning", "plot_exact_vs_estimate", "plot_exposure_trajectory",
    "plot_exposure_vs_insertions", "plot_relearning", "plot_relearning_at", "plot_seed_variation", "plot_sensitivity",
    "plot_sequential", "plot_sweep_point", "plot_tradeoff", "plot_training_curve", "plot_unlearning_methods", "preconditioned_descent",
    "prepare_memorization", "PretrainedLLMConfig", "PretrainedModelError", "pretrained_markdown", "pretrained_plot_data",
    "pretrained_summary", "PROFILES", "RandomnessSpace", "recommendations", "recommendations_markdown",
    "reference_points", "regression_outputs", "relearning_attack", "relearning_by_step", "relearning_markdown", "relearning_texts", "request_start",
    "RelearningConfig", "resolve_device", "resolve_full_profile", "resolve_profile", "retrain_without",
    "RobustnessConfig", "roc_auc", "roc_curve", "run_baseline_sweep", "run_benchmark", "run_case_study",
    "run_dp_comparison", "run_dp_study", "run_forgetting_sweep", "run_memorization", "run_pretrained_study", "run_relearning_study",
    "run_c3_study", "run_removal_sweep", "run_seed_variation", "run_sensitivity_study", "run_sequential_study", "sample_losses",
    "score_candidates_bruteforce", "score_trie", "select_parameters", "sequential_markdown", "sequential_summary",
    "setup_notebook", "smollm2_path", "solve_damped", "spectrum", "structure_costs", "structure_costs_markdown", "sweep_markdown", "sweep_point",
    "sweep_unlearning", "time_per_sample_gradients", "tokenize_lines", "tpr_at_fpr", "train_bpe_tokenizer",
    "train_case_study_model", "train_dp_language_model", "train_dp_model", "train_language_model",
    "train_memorization_model", "train_retrained_model", "TrainConfig", "TrainHistory", "true_fisher", "unlearn",
    "unlearning_setup", "unlearning_table", "UnlearningError", "UnlearningReport", "UnlearningSetup", "use_style",
    "verify_data", "window_dataset", "WoodburyFisher", "world_info",
]
