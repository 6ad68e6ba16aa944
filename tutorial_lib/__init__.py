"""tutorial_lib: second-order machine unlearning for language models, the library behind the course.

Nothing runs at import time; submodules load their heavy dependencies when called.
"""
from .baselines import FineTuneConfig, GradientAscentConfig, GradientDifferenceConfig, NPOConfig
from .canaries import Canary, InsertedCorpus, RandomnessSpace, insert_canaries, make_canaries
from .cache import CheckpointMismatchError, cache_root, load_run, save_run
from .curvature import (
    cosine,
    curvature_matrix,
    empirical_fisher,
    exact_hessian,
    gauss_newton,
    loss_gradient,
    preconditioned_descent,
    spectrum,
    true_fisher,
)
from .data import CORPORA, CorpusSplits, DataError, corpus_path, load_corpus, verify_data
from .dp import (
    DPComparisonConfig,
    DPConfig,
    dp_comparison,
    dp_markdown,
    dp_study,
    dp_study_cached,
    epsilon_spent,
    noise_multiplier_for,
    plot_dp_vs_unlearning,
    train_dp_language_model,
    train_dp_model,
)
from .distributed import (
    DistributedFisher,
    distributed_forget_gradient,
    distributed_gradient_matrix,
    distributed_newton_step,
    gather_rows,
    init_distributed,
    run_distributed,
    shard,
    shard_batch,
    shutdown_distributed,
    world_info,
)
from .evaluation import compute_loss, compute_perplexity, compute_text_perplexity, tokenize_lines
from .exposure import (
    CandidateTrie,
    ExposureEstimate,
    ExposureResult,
    build_trie,
    canary_texts,
    canary_trie,
    compute_exposure,
    estimate_exposure,
    exposure_from_scores,
    score_candidates,
    score_candidates_bruteforce,
    score_trie,
)
from .fisher import (
    BlockFisher,
    DenseFisher,
    DiagonalFisher,
    KFACFisher,
    MemoryBudgetError,
    WoodburyFisher,
    estimate_memory,
    make_fisher,
    structure_costs,
)
from .full_profile import (
    FullProfileError,
    FullProfilePlan,
    check_full_profile,
    choose_fisher_subset,
    estimate_fisher_memory,
    resolve_full_profile,
    save_random_model,
)
from .memorization import MemorizationConfig, MemorizationResult, run_memorization, train_memorization_model, train_retrained_model
from .mia import (
    attack_scores,
    generate_continuations,
    longest_common_prefix,
    membership_inference,
    roc_auc,
    roc_curve,
    rouge_l,
    tpr_at_fpr,
)
from .models import ModelConfig, count_parameters, load_pretrained, make_model
from .newton import (
    ConvexProblem,
    MLPProblem,
    NewtonConfig,
    certified_noise_std,
    fit,
    hashed_ngram_features,
    ihvp_cg,
    ihvp_exact,
    ihvp_lissa,
    influence_on_loss,
    influence_on_params,
    make_corpus_classification,
    newton_removal,
    newton_step,
    perturb,
    residual_bound,
    retrain_without,
    solve_damped,
)
from .notebook import NotebookSetup, setup_notebook
from .per_sample import (
    ParameterSpace,
    classifier_outputs,
    gradient_matrix,
    lm_outputs,
    make_lm_batch,
    per_sample_gradients,
    regression_outputs,
    sample_losses,
    select_parameters,
)
from .plotting import (
    plot_candidate_distribution,
    plot_exact_vs_estimate,
    plot_exposure_trajectory,
    plot_exposure_vs_insertions,
    plot_tradeoff,
    plot_training_curve,
    use_style,
)
from .profiles import PROFILES, resolve_device, resolve_profile
from .robustness import (
    RelearningConfig,
    RobustnessConfig,
    factors_for,
    plot_relearning,
    plot_sensitivity,
    plot_sequential,
    recommendations,
    recommendations_markdown,
    relearning_attack,
    relearning_markdown,
    relearning_study,
    relearning_texts,
    seed_variation,
    sensitivity_study,
    sequential_markdown,
    sequential_study,
    sequential_summary,
)
from .scenarios import (
    CaseStudyConfig,
    build_case_study,
    case_study_config,
    case_study_experiment,
    case_study_markdown,
    plot_case_study,
    train_case_study_model,
)
from .studies import (
    UnlearningSetup,
    choose_setting,
    forgetting_sweep,
    reference_points,
    removal_sweep,
    sweep_unlearning,
    unlearning_setup,
)
from .tokenization import make_byte_tokenizer, train_bpe_tokenizer
from .training import TrainConfig, TrainHistory, train_language_model
from .unlearning import (
    METHODS,
    FisherForgettingConfig,
    FisherRemovalConfig,
    UnlearningError,
    UnlearningReport,
    canary_forget_items,
    evaluate_unlearning,
    next_token_kl,
    unlearn,
)

__version__ = "0.1.0"
