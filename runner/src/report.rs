//! What a finished job reports: its outcome, each node's outcome and test results, as
//! JSON for CI (the terminal summary is the CLI's: `dispatcher`'s summary module).

use serde::{Deserialize, Serialize};

use states::{ErrorClass, Health, Outcome, TestResult};

/// One test case, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaseReport {
    /// The test definition's name.
    pub suite: String,
    pub case: String,
    pub result: TestResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    /// A URL the case points at (`lava-test-reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A file a node's test shell attached (`lava-test-run-attach`,
/// `lava-test-case-attach`), kept in the job's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttachmentReport {
    pub node: String,
    /// The test definition it was attached in.
    pub suite: String,
    /// The test case it belongs to; none: the definition's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mimetype: Option<String>,
    pub size: u64,
    /// Where it is, relative to the job's directory: `attachments/N-name`.
    pub file: String,
}

/// How one node's pipeline ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum NodeStatus {
    /// Every action ran.
    Done,
    /// An action failed; the rest did not run.
    Failed {
        class: ErrorClass,
        /// The pipeline action that failed (`boot`, `test`, ...).
        action: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeReport {
    pub node: String,
    pub role: String,
    #[serde(flatten)]
    pub status: NodeStatus,
    pub results: Vec<CaseReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentReport>,
}

/// One pipeline action of one node (or of the job, `node` none) as it ran: the
/// job's timeline, kept whole even when the log's middle was dropped for its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionSpan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The action's name, as its log section (`boot`, `deploy`, `test`, ...).
    pub action: String,
    /// When it started: RFC 3339 UTC with milliseconds, as the log's lines.
    pub started: String,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobReport {
    pub job_id: u64,
    pub job_name: Option<String>,
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_secs: f64,
    pub nodes: Vec<NodeReport>,
    /// Every action of every node, in the order they ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<ActionSpan>,
}

impl JobReport {
    /// The job's outcome from its nodes': complete when every node ran every action
    /// (failed test cases are results, not an incomplete job); otherwise incomplete,
    /// with the class and message of the first node that failed for a reason of its
    /// own. A node that failed only because a peer did is not the cause, so
    /// infrastructure and timeout failures are preferred over test ones.
    /// Every failed case, as `node.suite.case`.
    pub fn failed_cases(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.results
                    .iter()
                    .filter(|c| c.result == TestResult::Fail)
                    .map(move |c| format!("{}.{}.{}", n.node, c.suite, c.case))
            })
            .collect()
    }

    pub fn outcome_of(nodes: &[NodeReport]) -> Outcome {
        let failures = nodes.iter().filter_map(|n| match &n.status {
            NodeStatus::Failed {
                class,
                action,
                message,
            } => Some((
                *class,
                format!("{} ({}): {action}: {message}", n.node, n.role),
            )),
            NodeStatus::Done => None,
        });
        let rank = |class: &ErrorClass| match class {
            ErrorClass::Infrastructure => 0,
            ErrorClass::Timeout => 1,
            ErrorClass::Job => 2,
            ErrorClass::Test => 3,
            ErrorClass::Canceled => 4,
        };
        match failures.min_by_key(|(class, _)| rank(class)) {
            None => Outcome::complete(),
            Some((ErrorClass::Canceled, message)) => Outcome::canceled(message),
            Some((class, message)) => Outcome::incomplete(class, message),
        }
    }

    /// Every case of every node.
    pub fn cases(&self) -> impl Iterator<Item = (&NodeReport, &CaseReport)> {
        self.nodes
            .iter()
            .flat_map(|n| n.results.iter().map(move |c| (n, c)))
    }
}

pub fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Infrastructure => "infrastructure",
        ErrorClass::Job => "job",
        ErrorClass::Test => "test",
        ErrorClass::Timeout => "timeout",
        ErrorClass::Canceled => "canceled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, status: NodeStatus) -> NodeReport {
        NodeReport {
            node: name.into(),
            role: "r".into(),
            status,
            results: Vec::new(),
            attachments: Vec::new(),
        }
    }

    #[test]
    fn the_cause_is_preferred_over_its_consequences() {
        let failed = |class| NodeStatus::Failed {
            class,
            action: "test".into(),
            message: "m".into(),
        };
        let nodes = [
            node("a", failed(ErrorClass::Test)),
            node("b", failed(ErrorClass::Infrastructure)),
            node("c", NodeStatus::Done),
        ];
        let outcome = JobReport::outcome_of(&nodes);
        assert_eq!(outcome.health, Health::Incomplete);
        let (class, message) = outcome.error.unwrap();
        assert_eq!(class, ErrorClass::Infrastructure);
        assert!(message.starts_with("b (r): test"), "{message}");
        assert_eq!(
            JobReport::outcome_of(&[node("c", NodeStatus::Done)]).health,
            Health::Complete
        );
    }
}
