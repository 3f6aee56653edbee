//! Validated inference graphs (`graphs:`): steps over other routes — a model,
//! a fan-out with a combine, or a condition — run in order over a working
//! set of named tensors (docs/ensembles.md).

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    pub name: Arc<str>,
    pub steps: Vec<StepConfig>,
    /// Working tensors the graph answers with; `None`: the last step's outputs.
    pub outputs: Option<Vec<String>>,
}

impl GraphConfig {
    /// Every route a step may call.
    pub fn references(&self) -> impl Iterator<Item = &Arc<str>> {
        self.steps.iter().flat_map(|s| match &s.kind {
            StepKind::Model(m) => vec![m],
            StepKind::FanOut { members, .. } => members.iter().map(|m| &m.model).collect(),
            StepKind::Condition(c) => c.cases.iter().map(|c| &c.model).chain(c.default.as_ref()).collect(),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepConfig {
    pub name: Arc<str>,
    pub kind: StepKind,
    /// (model input, working tensor it is filled from); empty: the previous
    /// step's outputs (the client's inputs for the first step) as they are named.
    pub inputs: Vec<(String, String)>,
    /// (model output, working tensor it becomes); outputs not listed keep their names.
    pub outputs: Vec<(String, String)>,
    /// A failed optional step is skipped: the graph goes on without its outputs.
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// One route: the output of the step before feeds it.
    Model(Arc<str>),
    /// The same inputs to every member, in parallel, then one combined tensor.
    FanOut { members: Vec<Member>, combine: Combine },
    /// The first case that holds picks the route.
    Condition(Condition),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub model: Arc<str>,
    /// A failed optional member is left out of the combine.
    pub optional: bool,
    /// Its weight in `average` and `weighted_vote` (1 when none are given).
    pub weight: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CombineOp {
    /// Element-wise weighted mean (FP32): averaged probabilities.
    Average,
    /// Per row, the class most members chose (INT64 `[rows]`); ties → the lowest class.
    MajorityVote,
    /// Per row, the class with the largest sum of its voters' weights.
    WeightedVote,
    /// Element-wise maximum (FP32).
    Max,
    /// Members' tensors side by side along the last axis (FP32), in member order.
    Concat,
}

impl CombineOp {
    pub fn parse(s: &str) -> Option<CombineOp> {
        Some(match s {
            "average" => CombineOp::Average,
            "majority_vote" => CombineOp::MajorityVote,
            "weighted_vote" => CombineOp::WeightedVote,
            "max" => CombineOp::Max,
            "concat" => CombineOp::Concat,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CombineOp::Average => "average",
            CombineOp::MajorityVote => "majority_vote",
            CombineOp::WeightedVote => "weighted_vote",
            CombineOp::Max => "max",
            CombineOp::Concat => "concat",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Combine {
    pub op: CombineOp,
    /// The member output combined.
    pub tensor: String,
    /// The working tensor the result becomes.
    pub output: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub on: ConditionSource,
    pub cases: Vec<Case>,
    /// The route when no case holds; `None`: such a request is refused (400).
    pub default: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConditionSource {
    /// A working tensor holding exactly one value.
    Tensor(String),
    /// A request parameter (string, number or boolean).
    Parameter(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub test: CaseTest,
    pub model: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CaseTest {
    /// Equal as text, or as numbers when both sides are numbers.
    Equals(String),
    Above(f64),
    Below(f64),
}
