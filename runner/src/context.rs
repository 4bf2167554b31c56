//! What every node pipeline of one job shares, whatever the job's shape: the job,
//! where files go, the log, the coordinator group with a client per node, the
//! reports of nodes that ended; and the steps all shapes use (test definitions, their
//! scripts, test shells on a console, recording a node's end).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use coordinator::NodeClient;
use coordinator::relay::Relay;
use job_schemas::{GitRepo, Job, RepoDefinition, RepoSource, TestDefinitionSource, TestShell};
use parking_lot::Mutex;
use regex::Regex;
use tokio::io::{AsyncRead, AsyncWrite};

use super::report::{AttachmentReport, CaseReport, NodeReport, NodeStatus};
use super::shell::{self, Definition, DefinitionResults};
use super::{Coordination, Failure, RunSettings, canceled, files, helpers, nodes};
use crate::joblog::{JobLog, Level};
use crate::testdef::{self, ResultParser};
use hostctl::console::{Console, ConsoleLog};
use hostctl::images::ImageStore;
use hostctl::repos::{RepoCache, RepoError, Tree};
use hostctl::ssh::shell_quote;
use states::ErrorClass;

/// A progress callback for a transfer (`done`, `total` bytes) that logs each tenth
/// once, so a long upload or download shows in the log as it goes (and in the CLI's
/// progress bar, which reads these lines).
pub fn progress_logger(
    log: &JobLog,
    node: &str,
    what: &str,
) -> impl FnMut(u64, Option<u64>) + use<> {
    let (log, node, what) = (log.clone(), node.to_string(), what.to_string());
    let mut logged = 0u64;
    move |done, total| {
        let Some(total) = total.filter(|t| *t > 0) else {
            return;
        };
        let tenth = (done.min(total) * 10) / total;
        if tenth > logged {
            logged = tenth;
            log.line(
                Level::Info,
                Some(&node),
                format!(
                    "{what}: {}% ({:.1} of {:.1} MiB)",
                    tenth * 10,
                    done as f64 / 1_048_576.0,
                    total as f64 / 1_048_576.0
                ),
            );
        }
    }
}

/// Values computed once per job by whichever node asks first, by key.
type OnceMap<T> = Mutex<BTreeMap<String, Arc<tokio::sync::OnceCell<Result<T, Failure>>>>>;

pub struct GroupContext<'a> {
    pub job: &'a Job,
    pub settings: &'a RunSettings,
    pub log: &'a JobLog,
    pub coordination: &'a Coordination,
    pub group_id: String,
    /// `(node id, role)` of every node, in report order.
    pub members: Vec<(String, String)>,
    /// Those of `members` this process drives: all, or its part of a job that runs
    /// across several workers.
    pub here: Vec<(String, String)>,
    clients: BTreeMap<String, NodeClient>,
    /// Reports of nodes whose pipeline ended, by node id.
    finished: Arc<Mutex<BTreeMap<String, NodeReport>>>,
    /// Test definition trees of this job, by source: fetched once for every node.
    trees: OnceMap<Tree>,
    /// Commits the job's git revisions resolved to, by URL and revision.
    commits: OnceMap<String>,
    /// Files the nodes' test shells attached, as written into the job's directory.
    attachments: Mutex<Vec<AttachmentReport>>,
    /// The last number given to an attachment's file.
    attachment_numbers: std::sync::atomic::AtomicUsize,
}

impl<'a> GroupContext<'a> {
    /// Creates the job's coordinator group and a client for each node.
    pub async fn create(
        job: &'a Job,
        settings: &'a RunSettings,
        log: &'a JobLog,
        coordination: &'a Coordination,
        members: Vec<(String, String)>,
        here: Vec<(String, String)>,
    ) -> Result<GroupContext<'a>, Failure> {
        let group_id = coordination.group_id(settings.job_id);
        let credentials = coordination
            .join_group(&group_id, &members, &here)
            .await
            .map_err(|e| Failure::infra("plan", format!("coordinator: {e}")))?;
        let mut clients = BTreeMap::new();
        for credential in credentials {
            match NodeClient::connect(
                coordination.target.clone(),
                &group_id,
                &credential.node_id,
                &credential.token,
            )
            .await
            {
                Ok(client) => {
                    clients.insert(credential.node_id, client);
                }
                Err(err) => {
                    coordination.close_group(&group_id).await;
                    return Err(Failure::infra("plan", format!("coordinator: {err}")));
                }
            }
        }
        coordination.log_waits(&group_id, log);
        Ok(Self {
            job,
            settings,
            log,
            coordination,
            group_id,
            members,
            here,
            clients,
            finished: Arc::default(),
            trees: Mutex::default(),
            commits: Mutex::default(),
            attachments: Mutex::default(),
            attachment_numbers: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Ends the coordinator group.
    pub async fn close(&self) {
        self.coordination.close_group(&self.group_id).await;
    }

    /// `lava-group`'s output: lines of `node<TAB>role`.
    pub fn listing(&self) -> String {
        self.members
            .iter()
            .map(|(id, role)| format!("{id}\t{role}\n"))
            .collect()
    }

    /// Runs `pipelines` until they end, the job timeout passes or the job is canceled;
    /// says which, when they were cut short.
    pub async fn until_done(&self, pipelines: impl Future<Output = ()>) -> Option<Failure> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.job.timeout_secs);
        let cut_short = tokio::select! {
            ended = tokio::time::timeout_at(deadline, pipelines) => match ended {
                Ok(()) => None,
                Err(_) => Some(Failure::new(
                    ErrorClass::Timeout,
                    "job",
                    format!("the job timeout of {} s passed", self.job.timeout_secs),
                )),
            },
            () = canceled(self.settings.cancel.clone()) => Some(Failure::new(
                ErrorClass::Canceled,
                "job",
                "the job was canceled",
            )),
        };
        if let Some(failure) = &cut_short {
            self.log.line(Level::Error, None, failure.message.as_str());
        }
        cut_short
    }

    /// Every node's report, in member order; a node whose pipeline never reported was
    /// cut short by `cut_short`.
    pub fn reports(&self, cut_short: Option<Failure>) -> Vec<NodeReport> {
        let finished = self.finished.lock().clone();
        let attachments = self.attachments.lock().clone();
        self.here
            .iter()
            .map(|(node, role)| {
                let mut report = finished.get(node).cloned().unwrap_or_else(|| {
                    let failure = cut_short.clone().unwrap_or_else(|| {
                        Failure::infra("job", "the node's pipeline did not report")
                    });
                    failed_report(node, role, &failure)
                });
                report.attachments = attachments
                    .iter()
                    .filter(|a| a.node == *node)
                    .cloned()
                    .collect();
                report
            })
            .collect()
    }

    /// The cases a shell reported, as the job reports them; the files it attached are
    /// written into the job's directory (`attachments/N-name`) and listed with the
    /// node's report. A file that cannot be written is a warning, not a failed node.
    pub async fn collect(&self, node: &str, results: Vec<DefinitionResults>) -> Vec<CaseReport> {
        let dir = self.settings.work_dir.join("attachments");
        for definition in &results {
            for file in &definition.attachments {
                // Numbered across the job's nodes (which collect at the same time), so
                // no two files share a name; listed once written.
                let number = self
                    .attachment_numbers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                let relative = format!("attachments/{number}-{}", file.name);
                let written = async {
                    tokio::fs::create_dir_all(&dir).await?;
                    tokio::fs::write(self.settings.work_dir.join(&relative), &file.bytes).await
                }
                .await;
                match written {
                    Ok(()) => self.attachments.lock().push(AttachmentReport {
                        node: node.to_string(),
                        suite: definition.name.clone(),
                        case: file.case.clone(),
                        name: file.name.clone(),
                        mimetype: file.mimetype.clone(),
                        size: file.bytes.len() as u64,
                        file: relative,
                    }),
                    Err(err) => self.log.line(
                        Level::Warning,
                        Some(node),
                        format!("cannot keep attachment {}: {err}", file.name),
                    ),
                }
            }
        }
        case_reports(results)
    }

    /// Every node failed with `failure` (nothing could start), logged against `blamed`.
    pub fn fail_all(&self, blamed: &str, failure: &Failure) {
        self.log
            .line(Level::Error, Some(blamed), failure.message.as_str());
        for (node, role) in &self.here {
            self.record(failed_report(node, role, failure));
        }
    }

    /// The test shells of `role` on a console at a shell `prompt`: the `lava-*` shell
    /// helpers and the files typed in, each shell run and driven to its end, the prompt
    /// back after each. The node needs nothing of ours: a POSIX shell and `base64`.
    pub async fn console_shells<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        console: &mut Console<S>,
        prompt: &Regex,
        node: &str,
        role: &str,
    ) -> Result<Vec<CaseReport>, Failure> {
        let mut results = Vec::new();
        let mut relay = self.relay(node)?;
        let job_dir = format!("/tmp/lava-{}", self.settings.job_id);
        let shells = nodes::test_shells(self.job, role);
        let mut tools = files::ConsoleTools::default();
        if !shells.is_empty() {
            let _section = self.log.section(Some(node), "lava-helpers");
            tools = files::ConsoleTools::probe(console, prompt)
                .await
                .map_err(|e| Failure::infra("test", e))?;
            files::typing_echo(console, prompt, false)
                .await
                .map_err(|e| Failure::infra("test", e))?;
            helpers::install_on_console(console, prompt, tools, &job_dir)
                .await
                .map_err(|e| Failure::infra("test", format!("the lava-* helpers: {e}")))?;
        }
        for (index, (shell, timeout)) in shells.into_iter().enumerate() {
            let _section = self.log.section(Some(node), "test");
            let dir = format!("{job_dir}/tests/{index}");
            let definitions = self.definitions(&shell, index).await?;
            let files = self.scripts(node, role, &definitions, &dir, &NodeDirs::console(&job_dir));
            if index > 0 {
                files::typing_echo(console, prompt, false)
                    .await
                    .map_err(|e| Failure::infra("test", e))?;
            }
            for (path, content) in &files {
                files::write_console_file(console, prompt, tools, path, content)
                    .await
                    .map_err(|e| Failure::infra("test", format!("cannot write {path}: {e}")))?;
            }
            // The test shell runs as LAVA ran it: with the terminal echoing.
            files::typing_echo(console, prompt, true)
                .await
                .map_err(|e| Failure::infra("test", e))?;
            console
                .send_line(&shell::run_command(&format!("{dir}/run.sh")))
                .await
                .map_err(|e| Failure::infra("test", e))?;
            let outcome = shell::drive(
                console,
                &mut relay,
                &definitions
                    .iter()
                    .map(|(d, _)| d.reader())
                    .collect::<Result<Vec<_>, _>>()?,
                self.shell_timeout(timeout),
                self.log,
                node,
            )
            .await
            .map_err(shell_failure)?;
            let raised = raised_failure(&outcome);
            results.extend(self.collect(node, outcome.results).await);
            raised?;
            console
                .expect(prompt, Duration::from_secs(60))
                .await
                .map_err(|e| Failure::infra("test", e))?;
        }
        Ok(results)
    }

    pub fn record(&self, report: NodeReport) {
        if let NodeStatus::Failed {
            message, action, ..
        } = &report.status
        {
            // Peers waiting for this node fail now, naming it, instead of at their
            // deadline.
            self.coordination.fail_node(
                &self.group_id,
                &report.node,
                &format!("{action}: {message}"),
            );
        }
        self.finished.lock().insert(report.node.clone(), report);
    }

    pub fn client(&self, node: &str) -> Result<NodeClient, Failure> {
        self.clients
            .get(node)
            .cloned()
            .ok_or_else(|| Failure::infra("plan", format!("no coordinator client for {node}")))
    }

    pub fn relay(&self, node: &str) -> Result<Relay, Failure> {
        Ok(Relay::new(
            self.client(node)?,
            Duration::from_secs(self.job.timeout_secs),
        ))
    }

    pub async fn finish_node(
        &self,
        node: &str,
        role: &str,
        outcome: Result<(), Failure>,
        results: Vec<CaseReport>,
    ) {
        let status = match outcome {
            Ok(()) => {
                if let Ok(mut client) = self.client(node) {
                    let _ = client.finish().await;
                }
                NodeStatus::Done
            }
            Err(failure) => {
                self.log.line(
                    Level::Error,
                    Some(node),
                    format!("{} failed: {}", failure.action, failure.message),
                );
                NodeStatus::Failed {
                    class: failure.class,
                    action: failure.action.to_string(),
                    message: failure.message,
                }
            }
        };
        self.record(NodeReport {
            node: node.to_string(),
            role: role.to_string(),
            status,
            results,
            attachments: Vec::new(),
        });
    }

    /// The definitions of one test shell, fetched and checked, with their scripts.
    pub async fn definitions(
        &self,
        shell: &TestShell,
        shell_index: usize,
    ) -> Result<Vec<(PreparedDefinition, String)>, Failure> {
        let mut prepared = Vec::new();
        for (index, source) in shell.definitions.iter().enumerate() {
            let mut tree = None;
            let (definition, parameters) = match source {
                TestDefinitionSource::Inline {
                    definition,
                    parameters,
                } => (definition.as_ref().clone(), parameters.clone()),
                TestDefinitionSource::Url(url) => {
                    let text = self.definition_text(url).await?;
                    let definition = testdef::from_yaml(url.as_str(), &text)
                        .map_err(|e| Failure::new(ErrorClass::Job, "test", e))?;
                    (definition, BTreeMap::new())
                }
                TestDefinitionSource::Repository(repo) => {
                    let fetched = self.tree(repo).await?;
                    tree = Some(fetched.archive.clone());
                    let source_name = format!("{} in {}", repo.testdef, fetched.label);
                    let definition = testdef::from_yaml(&source_name, &fetched.definition)
                        .map_err(|e| Failure::new(ErrorClass::Job, "test", e))?;
                    (definition, repo.parameters.clone())
                }
            };
            let mut install_repos = Vec::new();
            if let Some(install) = definition.install.as_ref()
                && !shell.skip_install.repos
            {
                let mut params = definition.default_params();
                params.extend(parameters.clone());
                for repo in &install.git_repos {
                    let Some(repo) = testdef::resolve_git_repo(repo, &params) else {
                        continue;
                    };
                    let dir = testdef::install_repo_dir(&repo)
                        .map_err(|e| Failure::new(ErrorClass::Job, "test", e))?;
                    install_repos.push((dir, self.install_repo(&repo).await?));
                }
                for url in &install.bzr_repos {
                    let dir = testdef::install_bzr_dir(url)
                        .map_err(|e| Failure::new(ErrorClass::Job, "test", e))?;
                    install_repos.push((dir, self.install_bzr_repo(url).await?));
                }
            }
            if !install_repos.is_empty() && tree.is_none() {
                // The repositories go under a top of its own, where the definition runs.
                tree = Some(Arc::new(Vec::new()));
            }
            let name = definition.metadata.name.clone();
            let run_id = format!("{shell_index}.{index}_{}", sanitize(&name));
            let script = testdef::script(&definition, &parameters, &run_id, shell.skip_install);
            prepared.push((
                PreparedDefinition {
                    run_id,
                    name,
                    definition,
                    tree,
                    install_repos,
                },
                script,
            ));
        }
        Ok(prepared)
    }

    /// A definition's tree, fetched once per job whichever node asks first: every node
    /// runs the same commit, and the repository is asked once.
    async fn tree(&self, repo: &RepoDefinition) -> Result<Tree, Failure> {
        let key = format!("{:?}\n{}", repo.source, repo.testdef);
        let cell = self.trees.lock().entry(key).or_default().clone();
        cell.get_or_init(|| async {
            let cache = RepoCache::new(
                self.settings.image_store.join("repos"),
                self.settings.fetch.clone(),
            );
            let fetched = match &repo.source {
                RepoSource::Git { url, revision } => {
                    let commit = self.commit(&cache, url, revision.as_deref()).await?;
                    cache.git(url, Some(&commit), &repo.testdef).await
                }
                RepoSource::Bzr { url, revision } => {
                    cache.bzr(url, revision.as_deref(), &repo.testdef).await
                }
                RepoSource::Tar { archive } => cache.tar(archive, &repo.testdef),
                RepoSource::File { url } => {
                    // LAVA v1's tree for a URL is the definition file alone.
                    return Ok(Tree {
                        archive: Arc::new(Vec::new()),
                        definition: self.definition_text(url).await?,
                        label: url.to_string(),
                    });
                }
            };
            match fetched {
                Ok(tree) => {
                    self.log.line(
                        Level::Info,
                        None,
                        format!(
                            "test definition tree {}: {} bytes",
                            tree.label,
                            tree.archive.len()
                        ),
                    );
                    Ok(tree)
                }
                Err(err) => Err(repo_failure(err)),
            }
        })
        .await
        .clone()
    }

    /// An `install.git-repos` entry's tree (gzip tar) at the commit its branch (or the
    /// repository's HEAD) names, resolved once per job as a definition's own tree is.
    async fn install_repo(&self, repo: &GitRepo) -> Result<Arc<Vec<u8>>, Failure> {
        let url = url::Url::parse(repo.url()).map_err(|e| {
            Failure::new(
                ErrorClass::Job,
                "test",
                format!("install.git-repos: {}: not a URL: {e}", repo.url()),
            )
        })?;
        let branch = match repo {
            GitRepo::Detailed { branch, .. } => branch.as_deref(),
            GitRepo::Url(_) => None,
        };
        let cache = RepoCache::new(
            self.settings.image_store.join("repos"),
            self.settings.fetch.clone(),
        );
        let commit = self.commit(&cache, &url, branch).await?;
        let tree = cache
            .git_tree(&url, Some(&commit))
            .await
            .map_err(repo_failure)?;
        let archive = cache
            .read_archive(&tree.archive)
            .await
            .map_err(repo_failure)?;
        self.log.line(
            Level::Info,
            None,
            format!(
                "install.git-repos {url} @ {commit}: {} bytes",
                archive.len()
            ),
        );
        Ok(Arc::new(archive))
    }

    /// An `install.bzr-repos` branch's tree (its last revision, as LAVA branched it),
    /// as a `.tar.gz`: branched once per job, so every node installs the same revision.
    async fn install_bzr_repo(&self, url: &str) -> Result<Arc<Vec<u8>>, Failure> {
        let key = format!("install.bzr-repos\n{url}");
        let cell = self.trees.lock().entry(key).or_default().clone();
        let tree = cell
            .get_or_init(|| async {
                let cache = RepoCache::new(
                    self.settings.image_store.join("repos"),
                    self.settings.fetch.clone(),
                );
                let tree = cache.bzr_tree(url, None).await.map_err(repo_failure)?;
                self.log.line(
                    Level::Info,
                    None,
                    format!(
                        "install.bzr-repos {}: {} bytes",
                        tree.label,
                        tree.archive.len()
                    ),
                );
                Ok(tree)
            })
            .await
            .clone()?;
        Ok(tree.archive)
    }

    /// A test definition's text from its URL, through the lab's fetch policy.
    async fn definition_text(&self, url: &url::Url) -> Result<String, Failure> {
        let store = ImageStore::new(&self.settings.image_store, self.settings.fetch.clone())
            .map_err(|e| Failure::infra("test", e))?;
        store
            .fetch_text(url)
            .await
            .map_err(|e| Failure::new(ErrorClass::Job, "test", format!("{url}: {e}")))
    }

    /// The commit a git revision names, resolved once per job: every definition and
    /// node of the job then reads that commit from the cache, and the repository is
    /// asked once.
    async fn commit(
        &self,
        cache: &RepoCache,
        url: &url::Url,
        revision: Option<&str>,
    ) -> Result<String, Failure> {
        let key = format!("{url}\n{}", revision.unwrap_or_default());
        let cell = self.commits.lock().entry(key).or_default().clone();
        cell.get_or_init(|| async {
            cache
                .git_tree(url, revision)
                .await
                .map(|tree| tree.commit)
                .map_err(repo_failure)
        })
        .await
        .clone()
    }

    /// The files of one test shell: each definition's script and `run.sh`, which sets
    /// the node's environment and runs them in order. A definition from a repository
    /// also has its tree (a `.tar.gz`), unpacked beside its script by `run.sh`, and runs
    /// at the tree's top as LAVA v1 ran it, so `./scripts/x.sh` in the repository works.
    pub fn scripts(
        &self,
        node: &str,
        role: &str,
        definitions: &[(PreparedDefinition, String)],
        dir: &str,
        dirs: &NodeDirs,
    ) -> Vec<(String, Vec<u8>)> {
        let job_dir = dirs.job_dir.as_str();
        let mut env = vec![
            ("LAVA_JOB_ID", self.settings.job_id.to_string()),
            ("LAVA_NODE_ID", node.to_string()),
            ("LAVA_NODE_ROLE", role.to_string()),
            ("LAVA_GROUP", self.listing()),
            ("LAVA_MULTINODE_TRANSPORT", "marker".to_string()),
            ("LAVA_MULTINODE_TIMEOUT", self.job.timeout_secs.to_string()),
            (
                "LAVA_ATTACH_MAX_BYTES",
                crate::shell::MAX_ATTACHMENT_BYTES.to_string(),
            ),
            ("LAVA_BACKGROUND_DIR", format!("{job_dir}/background")),
        ];
        if dirs.kind == NodeKind::VmGroupHost {
            // VMs reach their host at qemu user networking's gateway.
            env.push(("_LAVA_VM_GROUP_HOST_IP", "10.0.2.2".to_string()));
        }
        if dirs.kind != NodeKind::Console {
            env.push((
                "LAVA_MULTI_NODE_CACHE",
                format!("{job_dir}/multinode-cache.txt"),
            ));
            env.push((
                "LAVA_MULTI_NODE_NETWORK_CACHE",
                format!("{job_dir}/multinode-network-cache.txt"),
            ));
        }
        let mut run = String::from("#!/bin/sh\n");
        for (key, value) in &env {
            run.push_str(&format!("export {key}={}\n", shell_quote(value)));
        }
        // The job's lava-* commands come first: the node agent on a host, the shell
        // helpers on a console node, whatever the image has of its own.
        run.push_str(&format!(
            "export PATH={}:\"$PATH\"\n",
            shell_quote(&format!("{job_dir}/bin"))
        ));
        let mut files = Vec::new();
        for (definition, script) in definitions {
            definition_files(definition, script, dir, &mut run, &mut files);
        }
        files.push((format!("{dir}/run.sh"), run.into_bytes()));
        files
    }

    pub fn shell_timeout(&self, action_timeout: Option<u64>) -> Duration {
        Duration::from_secs(action_timeout.unwrap_or(self.job.timeout_secs))
    }

    pub fn console_log(&self, node: &str) -> ConsoleLog {
        let path = self.settings.work_dir.join(format!("console-{node}.log"));
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(file) => ConsoleLog::appending(file),
            Err(err) => {
                self.log.line(
                    Level::Warning,
                    Some(node),
                    format!(
                        "cannot write {}: {err}; console kept in memory",
                        path.display()
                    ),
                );
                ConsoleLog::default()
            }
        }
    }
}

/// Where a node's test shells keep their files.
pub struct NodeDirs {
    /// The job's directory on the node: `bin/` (the `lava-*` commands), `tests/`.
    pub job_dir: String,
    pub kind: NodeKind,
}

/// What a node is, as far as its test shells' environment goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A node on a console (a VM): the shell helpers' defaults.
    Console,
    /// A host device reached over SSH: its MultiNode caches in the job's directory
    /// (a host's `/tmp` may be shared with other nodes, e.g. ssh-hosts on one machine).
    Host,
    /// A vm_group's host: as [`NodeKind::Host`], and it starts the VMs, which reach it
    /// at qemu user networking's gateway.
    VmGroupHost,
}

impl NodeDirs {
    pub fn vm_group_host(job_dir: &str) -> Self {
        Self {
            job_dir: job_dir.to_string(),
            kind: NodeKind::VmGroupHost,
        }
    }

    pub fn host(job_dir: &str) -> Self {
        Self {
            job_dir: job_dir.to_string(),
            kind: NodeKind::Host,
        }
    }

    pub fn console(job_dir: &str) -> Self {
        Self {
            job_dir: job_dir.to_string(),
            kind: NodeKind::Console,
        }
    }
}

/// A definition ready to run: its run id and what its results are read with.
pub struct PreparedDefinition {
    run_id: String,
    name: String,
    definition: job_schemas::TestDefinition,
    /// The tree it runs in (gzip tar; empty: a directory with nothing in it), for a
    /// definition from `testdef_repos` other than inline.
    tree: Option<Arc<Vec<u8>>>,
    /// Its `install.git-repos` trees (gzip tar), each with the directory under the top
    /// it is unpacked into before the definition runs.
    install_repos: Vec<(String, Arc<Vec<u8>>)>,
}

impl PreparedDefinition {
    /// The shell driver's view of this definition: its run id, name and result reader.
    pub fn reader(&self) -> Result<Definition, Failure> {
        Ok(Definition {
            run_id: self.run_id.clone(),
            name: self.name.clone(),
            parser: ResultParser::new(Some(&self.definition)).map_err(|e| {
                Failure::new(
                    ErrorClass::Job,
                    "test",
                    format!("{}: parse pattern: {e}", self.name),
                )
            })?,
        })
    }
}

pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One definition's line of `run.sh` and its files: its script, and for a definition
/// with a top of its own (a repository's tree, or `install.git-repos`) the archives
/// `run.sh` unpacks there before the definition runs at that top.
fn definition_files(
    definition: &PreparedDefinition,
    script: &str,
    dir: &str,
    run: &mut String,
    files: &mut Vec<(String, Vec<u8>)>,
) {
    let path = format!("{dir}/{}.sh", definition.run_id);
    // A definition whose install failed ends the shell: it raised.
    let raised = format!(
        "{{ lava_status=$?; [ \"$lava_status\" -ne {} ] || exit \"$lava_status\"; }}",
        testdef::INSTALL_FAILED
    );
    match &definition.tree {
        None => run.push_str(&format!("sh {} || {raised}\n", shell_quote(&path))),
        Some(archive) => {
            let top = format!("{dir}/{}", definition.run_id);
            let mut unpack = format!("mkdir -p {}", shell_quote(&top));
            if !archive.is_empty() {
                let packed = format!("{top}.tar.gz");
                unpack.push_str(&format!(
                    " && tar -xzf {} -C {}",
                    shell_quote(&packed),
                    shell_quote(&top)
                ));
                files.push((packed, archive.to_vec()));
            }
            // `install.git-repos`, each in its directory under the top.
            for (name, repo) in &definition.install_repos {
                let into = format!("{top}/{name}");
                let packed = format!("{into}.tar.gz");
                unpack.push_str(&format!(
                    " && mkdir -p {into} && tar -xzf {packed} -C {into} && rm -f {packed}",
                    into = shell_quote(&into),
                    packed = shell_quote(&packed),
                ));
                files.push((packed, repo.to_vec()));
            }
            // The subshell keeps the next definition's directory its own.
            run.push_str(&format!(
                "if {unpack}; then (cd {} && sh {}) || {raised}; else echo {}; fi\n",
                shell_quote(&top),
                shell_quote(&path),
                shell_quote(&format!(
                    "cannot unpack the tree of {} into {top}",
                    definition.name
                )),
            ));
        }
    }
    files.push((path, script.as_bytes().to_vec()));
}

/// A test definition tree that could not be had: the dispatcher's own disk is the
/// infrastructure's problem; everything else (a repository, revision or definition the
/// job named, a tool the lab lacks for it) is the job's.
fn repo_failure(err: RepoError) -> Failure {
    match err {
        RepoError::Io { path, source } => Failure::infra("test", format!("{path}: {source}")),
        err => Failure::new(ErrorClass::Job, "test", err),
    }
}

/// A guest's failure to boot: the job's own when the guest panicked, reported a boot
/// failure, refused its login or never showed its prompt (its image, the credentials
/// that must fit it, kernel command line or `shell_prompt` are the job's), the
/// infrastructure's when the console went away. A job's mistake must not mark the
/// lab's devices `unknown`. (A host booting the lab's own images fails as the
/// infrastructure's whatever its console showed: `host_device`.)
pub fn guest_boot_failure(err: &hostctl::console::ConsoleError, message: String) -> Failure {
    use hostctl::console::ConsoleError;
    let class = match err {
        ConsoleError::KernelPanic { .. }
        | ConsoleError::BootFailure { .. }
        | ConsoleError::LoginRefused { .. }
        | ConsoleError::Timeout { .. } => ErrorClass::Job,
        ConsoleError::Closed { .. } | ConsoleError::Io(_) => ErrorClass::Infrastructure,
    };
    Failure::new(class, "boot", message)
}

/// A shell that raised (`lava-test-raise`, or an install section that failed) fails
/// its node with the message it raised: the job's error when it was the install (the
/// definition asks for what the target cannot give), the test's otherwise.
pub fn raised_failure(outcome: &shell::ShellOutcome) -> Result<(), Failure> {
    let Some(message) = &outcome.raised else {
        return Ok(());
    };
    let class = if outcome.exit_status == testdef::INSTALL_FAILED {
        ErrorClass::Job
    } else {
        ErrorClass::Test
    };
    Err(Failure::new(class, "test", format!("raised: {message}")))
}

pub fn shell_failure(err: shell::ShellError) -> Failure {
    match err {
        shell::ShellError::Timeout { .. } => Failure::new(ErrorClass::Timeout, "test", err),
        shell::ShellError::Console(_) => Failure::infra("test", err),
    }
}

pub fn case_reports(results: Vec<DefinitionResults>) -> Vec<CaseReport> {
    results
        .into_iter()
        .flat_map(|d| {
            let suite = d.name;
            d.cases.into_iter().map(move |c| CaseReport {
                suite: suite.clone(),
                case: c.name,
                result: c.result,
                measurement: c.measurement,
                units: c.units,
                reference: c.reference,
            })
        })
        .collect()
}

pub fn failed_report(node: &str, role: &str, failure: &Failure) -> NodeReport {
    NodeReport {
        node: node.to_string(),
        role: role.to_string(),
        status: NodeStatus::Failed {
            class: failure.class,
            action: failure.action.to_string(),
            message: failure.message.clone(),
        },
        results: Vec::new(),
        attachments: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A gzip tar of one file `hello.txt` holding `text`, as `git archive` makes them
    /// (no top directory).
    fn archive(text: &str) -> Arc<Vec<u8>> {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("hello.txt"), text).unwrap();
        let out = src.path().join("a.tar.gz");
        let status = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&out)
            .arg("-C")
            .arg(src.path())
            .arg("hello.txt")
            .status()
            .unwrap();
        assert!(status.success());
        Arc::new(std::fs::read(out).unwrap())
    }

    #[test]
    fn install_git_repos_are_unpacked_under_the_top_before_the_definition_runs() {
        let yaml = "metadata: {name: g}\nrun: {steps: ['true']}\n";
        let definition = PreparedDefinition {
            run_id: "0.0_g".to_string(),
            name: "g".to_string(),
            definition: testdef::from_yaml("g.yaml", yaml).unwrap(),
            tree: Some(Arc::new(Vec::new())),
            install_repos: vec![
                ("tools".to_string(), archive("from tools")),
                ("sub/b2".to_string(), archive("from b2")),
            ],
        };
        let node = tempfile::tempdir().unwrap();
        let dir = node.path().join("lava").display().to_string();
        let script = "cat tools/hello.txt; echo; cat sub/b2/hello.txt; echo; ls\n";
        let mut run = String::new();
        let mut files = Vec::new();
        definition_files(&definition, script, &dir, &mut run, &mut files);
        for (path, content) in &files {
            std::fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&run)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{run}\n{text}");
        assert_eq!(text, "from tools\nfrom b2\nsub\ntools\n", "{run}");
    }
}
