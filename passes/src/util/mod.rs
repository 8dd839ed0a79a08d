//! Shared math for the passes (one file per topic; each file says who uses it).

pub mod mask_groups;
pub mod nm;
pub mod obs;
pub mod permute_consts;
pub mod permute_region;
pub mod permute_search;
pub mod ria;
pub mod score_math;
pub mod select;
pub mod sgpt_gram;
pub mod sgpt_plan;
