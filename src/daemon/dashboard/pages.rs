//! The pages and the actions on a VM.
//!
//! A page handler copies what it shows out of the projections (the view guard is dropped
//! before anything is rendered or read from disk, as everywhere in bangerd), renders it with
//! [`Html`], and stamps the page with the sequence number of the view it showed. The page's
//! script follows the log from that number ([`super::stream`]) and fetches the page's
//! `?fragment=1` form again when something happens, so a page never misses what came after
//! it was rendered.
//!
//! Actions are forms posted to `/vms/NAME/ACTION`; they run the very handlers the RPC
//! methods run ([`crate::daemon::vm`]), so each is a real operation in the log, with its own
//! op id, claims and recovery.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use banger_events::{Envelope, Owner, Seq, VmState};
use banger_projections::{OperationView, Projections, VmView};
use serde::Deserialize;
use tracing::Instrument;

use super::Shared;
use super::html::Html;
use crate::api::{HandleEntry, ImageView, KernelView, NameParams, VmStopParams};
use crate::cli::format::{format_age, format_timestamp, now_unix_ms, short_id};
use crate::daemon::dispatch::Cx;
use crate::daemon::vm;
use crate::rpc::protocol::{ErrorCode, RpcError};
use crate::size::format_bytes;

/// The most of a VM's serial console a page shows: its end.
pub const CONSOLE_TAIL_BYTES: u64 = 16 * 1024;

/// How many of the latest events the event page starts with (the stream adds the rest).
pub const EVENTS_PAGE_ROWS: u64 = 200;

/// How many finished operations the operations page lists below those in flight.
const FINISHED_OPERATIONS: usize = 25;

/// `?fragment=1`: only the page's `<main>` content, for the script to swap in.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    fragment: Option<String>,
}

/// Which tab of the navigation a page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    Vms,
    Images,
    Kernels,
    Operations,
    Events,
    None,
}

/// How a page stays current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// Fetch the page's fragment again after events.
    Refresh,
    /// Append each event to the table (the event page).
    Append,
}

/// A rendered page, before the layout goes around it.
pub struct Page {
    pub title: String,
    pub nav: Nav,
    pub live: Live,
    /// The last event the content reflects; the stream continues after it.
    pub seq: Seq,
    pub content: Html,
}

impl Shared {
    /// The page, or only its content when the query asks for the fragment.
    fn respond(&self, query: &PageQuery, status: StatusCode, page: Page) -> Response {
        let body = if query.fragment.is_some() {
            page.content
        } else {
            layout(&page)
        };
        html_response(status, body)
    }
}

pub fn html_response(status: StatusCode, body: Html) -> Response {
    let mut response = (status, body.into_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// The page around the content: navigation, the live indicator, where action results show.
pub fn layout(page: &Page) -> Html {
    let mut html = Html::new();
    html.markup("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .markup("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .markup("<title>")
        .text(&page.title)
        .markup(" · banger</title>")
        .markup("<link rel=\"stylesheet\" href=\"/assets/dashboard.css\">")
        .markup("<script src=\"/assets/dashboard.js\" defer></script>")
        .markup("</head><body data-seq=\"")
        .text(page.seq.0)
        .markup("\" data-live=\"")
        .markup(match page.live {
            Live::Refresh => "refresh",
            Live::Append => "append",
        })
        .markup("\"><header><a class=\"brand\" href=\"/\">banger</a><nav>");
    for (nav, href, label) in [
        (Nav::Vms, "/", "VMs"),
        (Nav::Images, "/images", "Images"),
        (Nav::Kernels, "/kernels", "Kernels"),
        (Nav::Operations, "/operations", "Operations"),
        (Nav::Events, "/events", "Events"),
    ] {
        html.markup("<a href=\"").markup(href).markup("\"");
        if nav == page.nav {
            html.markup(" aria-current=\"page\"");
        }
        html.markup(">").markup(label).markup("</a>");
    }
    html.markup("</nav><span id=\"live\" class=\"live\">connecting…</span></header>")
        .markup("<p id=\"flash\" class=\"flash\" role=\"status\" hidden></p>")
        .markup("<main id=\"content\">")
        .html(&page.content)
        .markup("</main></body></html>\n");
    html
}

/// A page that says something went wrong (or was refused), with `message` in `#error`, as of
/// the log's `seq`.
pub fn message_page(title: &str, message: &str, seq: Seq) -> Page {
    let mut content = Html::new();
    content
        .markup("<h1>")
        .text(title)
        .markup("</h1><p id=\"error\" class=\"error\">")
        .text(message)
        .markup("</p>");
    Page {
        title: title.to_owned(),
        nav: Nav::None,
        live: Live::Refresh,
        seq,
        content,
    }
}

/// A bare page for answers outside a session (refusals, the sign-in page): no script, no
/// stylesheet (both need a session), nothing but the message.
pub fn bare_page(title: &str, message: &str, link: Option<(&'static str, &str)>) -> Html {
    let mut html = Html::new();
    html.markup("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>")
        .text(title)
        .markup(" · banger</title></head><body><h1>")
        .text(title)
        .markup("</h1><p id=\"error\">")
        .text(message)
        .markup("</p>");
    if let Some((href, label)) = link {
        html.markup("<p><a href=\"")
            .markup(href)
            .markup("\">")
            .text(label)
            .markup("</a></p>");
    }
    html.markup("</body></html>\n");
    html
}

// ---- VMs ---------------------------------------------------------------------------------

/// A VM and the operation that holds it, if any.
pub struct VmRow {
    pub vm: VmView,
    pub operation: Option<OperationView>,
}

fn vm_rows(view: &Projections) -> Vec<VmRow> {
    let mut rows: Vec<VmRow> = view
        .vms
        .values()
        .map(|vm| VmRow {
            vm: vm.clone(),
            operation: view
                .operations_on_vm(vm.id)
                .filter(|op| op.is_unresolved())
                .last()
                .cloned(),
        })
        .collect();
    rows.sort_by(|a, b| a.vm.name.cmp(&b.vm.name));
    rows
}

pub async fn vms(State(shared): State<Arc<Shared>>, Query(query): Query<PageQuery>) -> Response {
    let (rows, seq) = {
        let view = shared.daemon.journal.view();
        (vm_rows(&view), view.last_seq)
    };
    let page = Page {
        title: "VMs".into(),
        nav: Nav::Vms,
        live: Live::Refresh,
        seq,
        content: render_vms(&rows, now_unix_ms()),
    };
    shared.respond(&query, StatusCode::OK, page)
}

pub fn render_vms(rows: &[VmRow], now_unix_ms: u64) -> Html {
    let mut html = Html::new();
    html.markup("<h1>VMs</h1>");
    if rows.is_empty() {
        html.markup("<p class=\"empty\">No VMs yet. Create one with <code>banger vm create dev --image IMAGE</code>, or <code>banger vm run</code>.</p>");
        return html;
    }
    html.markup("<table id=\"vms\"><thead><tr><th>Name</th><th>State</th><th>Image</th><th>Kernel</th><th>VMM</th><th>vCPUs</th><th>Memory</th><th>Uptime</th><th>Operation</th></tr></thead><tbody>");
    for VmRow { vm, operation } in rows {
        html.markup("<tr data-vm=\"")
            .text(&vm.name)
            .markup("\"><td><a href=\"/vms/")
            .path_segment(&vm.name)
            .markup("\">")
            .text(&vm.name)
            .markup("</a></td><td>")
            .html(&state_badge(vm.state))
            .markup("</td><td>")
            .text(&vm.spec.image)
            .markup("</td><td>")
            .text(&vm.spec.kernel)
            .markup("</td><td>")
            .text(vm.vmm())
            .markup("</td><td class=\"num\">")
            .text(vm.spec.vcpus)
            .markup("</td><td class=\"num\">")
            .text(format_bytes(vm.spec.memory_mib.saturating_mul(1 << 20)))
            .markup("</td><td>")
            .text(uptime(vm, now_unix_ms))
            .markup("</td><td>")
            .html(&operation_cell(operation.as_ref()))
            .markup("</td></tr>");
    }
    html.markup("</tbody></table>");
    html
}

/// How long a running VM has been running (since its state last changed to running); `-`
/// otherwise.
fn uptime(vm: &VmView, now_unix_ms: u64) -> String {
    if vm.state == VmState::Running {
        format_age(vm.changed_at_unix_ms, now_unix_ms)
    } else {
        "-".to_owned()
    }
}

fn state_badge(state: VmState) -> Html {
    let mut html = Html::new();
    html.markup("<span class=\"state state-")
        .text(state.as_str())
        .markup("\">")
        .text(state.as_str())
        .markup("</span>");
    html
}

/// `vm.stop: shutdown (started)`, or `-`.
fn operation_cell(operation: Option<&OperationView>) -> Html {
    let mut html = Html::new();
    let Some(op) = operation else {
        html.markup("-");
        return html;
    };
    html.markup("<span class=\"op op-")
        .text(op.status.as_str())
        .markup("\" title=\"operation ")
        .text(op.op_id)
        .markup("\">")
        .text(op.kind)
        .markup(" ")
        .text(op.status.as_str());
    if let Some(step) = op.current_step() {
        html.markup(": <span class=\"step\">")
            .text(&step.name)
            .markup("</span> (")
            .text(step.status)
            .markup(")");
    }
    html.markup("</span>");
    html
}

// ---- one VM ------------------------------------------------------------------------------

/// Everything the VM page shows.
pub struct VmDetail {
    pub vm: VmView,
    pub handles: Vec<HandleEntry>,
    pub operations: Vec<OperationView>,
    /// The end of the serial console (`None`: nothing printed yet).
    pub console: Option<String>,
}

/// The actions a VM page offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Stop,
    Start,
    Restart,
    Delete,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Start, Action::Stop, Action::Restart, Action::Delete];

    fn parse(text: &str) -> Option<Action> {
        Self::ALL.into_iter().find(|action| action.name() == text)
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Restart => "restart",
            Action::Delete => "delete",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Action::Stop => "Stop",
            Action::Start => "Start",
            Action::Restart => "Restart",
            Action::Delete => "Delete",
        }
    }

    /// The RPC method whose handler it runs.
    fn method(self) -> &'static str {
        match self {
            Action::Stop => "vm.stop",
            Action::Start => "vm.start",
            Action::Restart => "vm.restart",
            Action::Delete => "vm.delete",
        }
    }

    /// What the confirmation says will happen.
    fn consequence(self) -> &'static str {
        match self {
            Action::Stop => {
                "Its guest is asked to shut down (Ctrl-Alt-Del) and is forced off if it has not within the stop timeout."
            }
            Action::Start => "It boots again, with the same disks and network address.",
            Action::Restart => "It is stopped (gracefully), then started again.",
            Action::Delete => "It is stopped and its disks are removed. This cannot be undone.",
        }
    }

    /// Whether the button is offered in `state` (the operation checks again, whatever the
    /// page showed).
    fn offered(self, state: VmState) -> bool {
        match self {
            Action::Stop => state == VmState::Running,
            Action::Start => state == VmState::Stopped,
            Action::Restart => matches!(state, VmState::Running | VmState::Stopped),
            Action::Delete => state != VmState::Deleting,
        }
    }
}

pub async fn vm_page(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    let (found, seq) = {
        let view = shared.daemon.journal.view();
        let found = view.vm_by_name(&name).map(|vm| VmDetail {
            vm: vm.clone(),
            handles: view
                .handles_of(Owner::Vm(vm.id))
                .map(|(handle, held)| HandleEntry {
                    handle: handle.clone(),
                    view: held.clone(),
                })
                .collect(),
            operations: view.operations_on_vm(vm.id).cloned().collect(),
            console: None,
        });
        (found, view.last_seq)
    };
    let Some(mut detail) = found else {
        let page = message_page(
            "No such VM",
            &format!("There is no VM named {name} (any more); see the list of VMs."),
            seq,
        );
        return shared.respond(&query, StatusCode::NOT_FOUND, page);
    };
    let console_path = shared.daemon.layout.vm_console_log(detail.vm.id);
    detail.console = tokio::task::spawn_blocking(move || console_tail(&console_path))
        .await
        .unwrap_or_else(|error| Some(format!("(cannot read the console: {error})")));
    let page = Page {
        title: format!("vm {}", detail.vm.name),
        nav: Nav::Vms,
        live: Live::Refresh,
        seq,
        content: render_vm(&detail, &shared.secret.csrf_token(), now_unix_ms()),
    };
    shared.respond(&query, StatusCode::OK, page)
}

/// The last [`CONSOLE_TAIL_BYTES`] of a console file, from the first whole line; `None` when
/// there is no file yet. Dropped ranges of a console kept within `vm.console_max` read as
/// zeros, which are left out.
fn console_tail(path: &Path) -> Option<String> {
    let read = || -> io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(CONSOLE_TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.take(CONSOLE_TAIL_BYTES).read_to_end(&mut bytes)?;
        bytes.retain(|&b| b != 0);
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if start > 0
            && let Some(newline) = text.find('\n')
        {
            text.drain(..=newline);
        }
        Ok(text)
    };
    match read() {
        Ok(text) => Some(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => Some(format!("(cannot read the console: {error})")),
    }
}

pub fn render_vm(detail: &VmDetail, csrf: &str, now_unix_ms: u64) -> Html {
    let vm = &detail.vm;
    let busy = detail.operations.iter().any(OperationView::is_unresolved);
    let mut html = Html::new();
    html.markup("<h1>vm <span class=\"name\">")
        .text(&vm.name)
        .markup("</span> ")
        .html(&state_badge(vm.state))
        .markup("</h1><div class=\"actions\">");
    for action in Action::ALL {
        html.markup("<button type=\"button\" data-dialog=\"confirm-")
            .markup(action.name())
            .markup("\"");
        if action == Action::Delete {
            html.markup(" class=\"danger\"");
        }
        if busy || !action.offered(vm.state) {
            html.markup(" disabled");
        }
        html.markup(">").markup(action.label()).markup("</button>");
    }
    html.markup("</div>");
    for action in Action::ALL {
        html.markup("<dialog id=\"confirm-")
            .markup(action.name())
            .markup("\"><form class=\"action\" method=\"post\" action=\"/vms/")
            .path_segment(&vm.name)
            .markup("/")
            .markup(action.name())
            .markup("\" data-what=\"")
            .markup(action.name())
            .markup(" ")
            .text(&vm.name)
            .markup("\"><input type=\"hidden\" name=\"csrf\" value=\"")
            .text(csrf)
            .markup("\"><p>")
            .markup(action.label())
            .markup(" VM <b>")
            .text(&vm.name)
            .markup("</b>? ")
            .markup(action.consequence())
            .markup("</p><div class=\"buttons\"><button type=\"button\" data-close>Cancel</button><button type=\"submit\" class=\"confirm\">")
            .markup(action.label())
            .markup(" ")
            .text(&vm.name)
            .markup("</button></div></form></dialog>");
    }
    if busy {
        html.markup("<p class=\"busy\">An operation holds this VM: ")
            .html(&operation_cell(
                detail.operations.iter().rev().find(|op| op.is_unresolved()),
            ))
            .markup("</p>");
    }

    html.markup("<section><h2>Spec</h2><dl class=\"details\">");
    let memory = format_bytes(vm.spec.memory_mib.saturating_mul(1 << 20));
    let root_disk = format_bytes(vm.spec.root_disk_mib.saturating_mul(1 << 20));
    let work_disk = format_bytes(vm.spec.work_disk_mib.saturating_mul(1 << 20));
    let vmm = match &vm.backend {
        Some(backend) => format!("{} ({})", backend.vmm, backend.reason),
        None => vm.vmm().to_string(),
    };
    let process = vm
        .process
        .map_or_else(|| "-".to_owned(), |p| format!("pid {}", p.pid));
    let created = format!(
        "{} ({} ago, seq {})",
        format_timestamp(vm.defined_at_unix_ms),
        format_age(vm.defined_at_unix_ms, now_unix_ms),
        vm.defined_seq
    );
    for (key, value) in [
        ("id", vm.id.to_string()),
        ("state", vm.state.to_string()),
        ("image", vm.spec.image.clone()),
        ("kernel", vm.spec.kernel.clone()),
        ("VMM", vmm),
        ("vCPUs", vm.spec.vcpus.to_string()),
        ("memory", memory),
        ("root disk", root_disk),
        ("work disk", work_disk),
        ("process", process),
        ("uptime", uptime(vm, now_unix_ms)),
        ("created", created),
    ] {
        html.markup("<dt>")
            .markup(key)
            .markup("</dt><dd>")
            .text(value)
            .markup("</dd>");
    }
    if let Some(exit) = &vm.last_exit {
        let how = match (exit.exit_code, exit.signal) {
            (_, Some(signal)) => format!("killed by signal {signal}"),
            (Some(code), None) => format!("exit status {code}"),
            (None, None) => "unknown status".to_owned(),
        };
        html.markup("<dt>last exit</dt><dd>")
            .text(format_args!(
                "pid {} {how}, {} ago (seq {})",
                exit.pid,
                format_age(exit.at_unix_ms, now_unix_ms),
                exit.seq
            ))
            .markup("<pre class=\"console\">")
            .text(&exit.console_tail)
            .markup("</pre></dd>");
    }
    html.markup("</dl></section>");

    html.markup("<section><h2>Host resources</h2>");
    if detail.handles.is_empty() {
        html.markup("<p class=\"empty\">None held.</p>");
    } else {
        html.markup("<table id=\"handles\"><thead><tr><th>Resource</th><th>Since seq</th></tr></thead><tbody>");
        for entry in &detail.handles {
            html.markup("<tr><td>")
                .text(&entry.handle)
                .markup("</td><td class=\"num\">")
                .text(entry.view.acquired_seq)
                .markup("</td></tr>");
        }
        html.markup("</tbody></table>");
    }
    html.markup("</section><section><h2>Operations</h2>")
        .html(&operations_table(
            detail.operations.iter().rev(),
            now_unix_ms,
            "vm-operations",
        ))
        .markup("</section><section><h2>Console</h2>");
    match &detail.console {
        None => html.markup("<p class=\"empty\">Nothing printed yet.</p>"),
        Some(text) => html
            .markup("<pre id=\"console\" class=\"console\">")
            .text(text)
            .markup("</pre>"),
    };
    html.markup("</section>");
    html
}

fn operations_table<'a>(
    operations: impl Iterator<Item = &'a OperationView>,
    now_unix_ms: u64,
    id: &'static str,
) -> Html {
    let mut html = Html::new();
    let mut rows = 0;
    html.markup("<table id=\"")
        .markup(id)
        .markup("\"><thead><tr><th>Op</th><th>Kind</th><th>Target</th><th>Status</th><th>Steps</th><th>Started</th></tr></thead><tbody>");
    for op in operations {
        rows += 1;
        html.markup("<tr data-op=\"")
            .text(op.op_id)
            .markup("\"><td><code title=\"")
            .text(op.op_id)
            .markup("\">")
            .text(short_id(&op.op_id))
            .markup("</code></td><td>")
            .text(op.kind)
            .markup("</td><td>")
            .text(&op.target)
            .markup("</td><td><span class=\"op op-")
            .text(op.status.as_str())
            .markup("\">")
            .text(op.status.as_str())
            .markup("</span></td><td><ol class=\"steps\">");
        for step in &op.steps {
            html.markup("<li class=\"step-")
                .text(step.status)
                .markup("\">")
                .text(&step.name)
                .markup(" <small>")
                .text(step.status)
                .markup("</small></li>");
        }
        html.markup("</ol>");
        if let Some(error) = &op.error {
            html.markup("<p class=\"error\">")
                .text(error)
                .markup("</p>");
        }
        html.markup("</td><td title=\"")
            .text(format_timestamp(op.started_at_unix_ms))
            .markup("\">")
            .text(format_age(op.started_at_unix_ms, now_unix_ms))
            .markup(" ago</td></tr>");
    }
    html.markup("</tbody></table>");
    if rows == 0 {
        let mut empty = Html::new();
        empty.markup("<p class=\"empty\">None.</p>");
        return empty;
    }
    html
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// `POST /vms/NAME/ACTION`: checks the form's CSRF token (the session and Origin were
/// checked before), runs the operation to its end and sends the browser back to the VM's page
/// (to the list after a delete), or answers with the error.
pub async fn action(
    State(shared): State<Arc<Shared>>,
    UrlPath((name, action)): UrlPath<(String, String)>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let csrf_ok = form
        .as_ref()
        .is_ok_and(|Form(form)| shared.secret.csrf_matches(&form.csrf));
    if !csrf_ok {
        let refusal = super::auth::Refusal::BadCsrf;
        return html_response(
            refusal.status(),
            bare_page("Refused", refusal.message(), None),
        );
    }
    let Some(action) = Action::parse(&action) else {
        let page = message_page(
            "No such action",
            "A VM can be stopped, started, restarted or deleted here.",
            shared.daemon.journal.last_seq(),
        );
        return shared.respond(&PageQuery::default(), StatusCode::NOT_FOUND, page);
    };
    match run_action(&shared, action, name.clone()).await {
        Ok(()) => {
            let mut location = Html::new();
            if action == Action::Delete {
                location.markup("/");
            } else {
                location.markup("/vms/").path_segment(&name);
            }
            see_other(location.as_str())
        }
        Err(error) => {
            let page = message_page(
                &format!("Could not {} {name}", action.name()),
                &error.message,
                shared.daemon.journal.last_seq(),
            );
            shared.respond(&PageQuery::default(), status_of(error.code), page)
        }
    }
}

/// Runs `action` on VM `name` through the RPC method's own handler, as a request of its own
/// (a fresh op id, a tracing span that says it came from the dashboard).
async fn run_action(shared: &Shared, action: Action, name: String) -> Result<(), RpcError> {
    let daemon = shared.daemon.clone();
    let op_id = daemon.ids.op_id();
    let method = action.method();
    let span = tracing::info_span!("dashboard", %op_id, method, vm = %name);
    let cx = Cx {
        op_id,
        request_id: 0,
        method,
        span: span.clone(),
    };
    async move {
        tracing::info!("asked from the dashboard");
        match action {
            Action::Stop => vm::stop(
                daemon,
                cx,
                VmStopParams {
                    name,
                    timeout_ms: None,
                },
            )
            .await
            .map(drop),
            Action::Start => vm::start(daemon, cx, NameParams { name }).await.map(drop),
            Action::Restart => vm::restart(
                daemon,
                cx,
                VmStopParams {
                    name,
                    timeout_ms: None,
                },
            )
            .await
            .map(drop),
            Action::Delete => vm::delete(daemon, cx, NameParams { name }).await.map(drop),
        }
    }
    .instrument(span)
    .await
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::AlreadyExists
        | ErrorCode::NotRunning
        | ErrorCode::Busy
        | ErrorCode::WrongState => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::OperationFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

// ---- images, kernels ---------------------------------------------------------------------

pub async fn images(State(shared): State<Arc<Shared>>, Query(query): Query<PageQuery>) -> Response {
    let (images, seq): (Vec<ImageView>, Seq) = {
        let view = shared.daemon.journal.view();
        (view.images.values().cloned().collect(), view.last_seq)
    };
    let page = Page {
        title: "Images".into(),
        nav: Nav::Images,
        live: Live::Refresh,
        seq,
        content: render_images(&images, now_unix_ms()),
    };
    shared.respond(&query, StatusCode::OK, page)
}

pub fn render_images(images: &[ImageView], now_unix_ms: u64) -> Html {
    let mut html = Html::new();
    html.markup("<h1>Images</h1>");
    if images.is_empty() {
        html.markup("<p class=\"empty\">No images yet. Pull one with <code>banger image pull debian</code> (or any OCI reference), or register a file with <code>banger image register NAME --rootfs FILE</code>.</p>");
        return html;
    }
    html.markup("<table id=\"images\"><thead><tr><th>Name</th><th>Size</th><th>Kernel</th><th>Source</th><th>sha256</th><th>Registered</th></tr></thead><tbody>");
    for image in images {
        html.markup("<tr><td>")
            .text(&image.name)
            .markup("</td><td class=\"num\">")
            .text(format_bytes(image.size_bytes))
            .markup("</td><td>")
            .text(image.kernel.as_deref().unwrap_or("-"))
            .markup("</td><td>")
            .text(&image.source)
            .markup("</td><td><code title=\"")
            .text(&image.sha256)
            .markup("\">")
            .text(image.sha256.get(..12).unwrap_or(&image.sha256))
            .markup("</code></td><td title=\"")
            .text(format_timestamp(image.registered_at_unix_ms))
            .markup("\">")
            .text(format_age(image.registered_at_unix_ms, now_unix_ms))
            .markup(" ago</td></tr>");
    }
    html.markup("</tbody></table>");
    html
}

pub async fn kernels(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let (kernels, seq): (Vec<KernelView>, Seq) = {
        let view = shared.daemon.journal.view();
        (view.kernels.values().cloned().collect(), view.last_seq)
    };
    let page = Page {
        title: "Kernels".into(),
        nav: Nav::Kernels,
        live: Live::Refresh,
        seq,
        content: render_kernels(&kernels, now_unix_ms()),
    };
    shared.respond(&query, StatusCode::OK, page)
}

pub fn render_kernels(kernels: &[KernelView], now_unix_ms: u64) -> Html {
    let mut html = Html::new();
    html.markup("<h1>Kernels</h1>");
    if kernels.is_empty() {
        html.markup("<p class=\"empty\">No kernels yet. Pull the default with <code>banger kernel pull debian-12-cloud</code> (<code>vm create</code> does it on first use), or import one with <code>banger kernel import NAME --from DIR</code>.</p>");
        return html;
    }
    html.markup("<table id=\"kernels\"><thead><tr><th>Name</th><th>Version</th><th>initrd</th><th>Source</th><th>sha256</th><th>Registered</th></tr></thead><tbody>");
    for kernel in kernels {
        html.markup("<tr><td>")
            .text(&kernel.name)
            .markup("</td><td>")
            .text(if kernel.version.is_empty() {
                "unknown"
            } else {
                &kernel.version
            })
            .markup("</td><td>")
            .text(if kernel.initrd_path.is_some() {
                "yes"
            } else {
                "no"
            })
            .markup("</td><td>")
            .text(&kernel.source)
            .markup("</td><td><code title=\"")
            .text(&kernel.sha256)
            .markup("\">")
            .text(kernel.sha256.get(..12).unwrap_or(&kernel.sha256))
            .markup("</code></td><td title=\"")
            .text(format_timestamp(kernel.registered_at_unix_ms))
            .markup("\">")
            .text(format_age(kernel.registered_at_unix_ms, now_unix_ms))
            .markup(" ago</td></tr>");
    }
    html.markup("</tbody></table>");
    html
}

// ---- operations ----------------------------------------------------------------------------

pub async fn operations(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<PageQuery>,
) -> Response {
    let (unresolved, finished, seq) = {
        let view = shared.daemon.journal.view();
        let mut unresolved: Vec<OperationView> = view.unresolved().cloned().collect();
        unresolved.sort_by_key(|op| op.started_seq);
        let mut finished: Vec<&OperationView> = view
            .operations
            .values()
            .filter(|op| op.is_finished())
            .collect();
        finished.sort_by_key(|op| std::cmp::Reverse(op.started_seq));
        let finished: Vec<OperationView> = finished
            .into_iter()
            .take(FINISHED_OPERATIONS)
            .cloned()
            .collect();
        (unresolved, finished, view.last_seq)
    };
    let now = now_unix_ms();
    let mut content = Html::new();
    content
        .markup("<h1>Operations</h1><section><h2>In flight and stuck</h2>")
        .html(&operations_table(unresolved.iter(), now, "ops-unresolved"))
        .markup("<p class=\"hint\">A stuck operation waits for <code>banger ops retry OP</code>.</p></section><section><h2>Latest finished</h2>")
        .html(&operations_table(finished.iter(), now, "ops-finished"))
        .markup("</section>");
    let page = Page {
        title: "Operations".into(),
        nav: Nav::Operations,
        live: Live::Refresh,
        seq,
        content,
    };
    shared.respond(&query, StatusCode::OK, page)
}

// ---- events --------------------------------------------------------------------------------

pub async fn events(State(shared): State<Arc<Shared>>, Query(query): Query<PageQuery>) -> Response {
    let journal = shared.daemon.journal.clone();
    let last = journal.last_seq();
    let first = Seq(last.0.saturating_sub(EVENTS_PAGE_ROWS - 1).max(1));
    let read = tokio::task::spawn_blocking(move || {
        if last == Seq::ZERO {
            return Ok(Vec::new());
        }
        journal.read(first, last, EVENTS_PAGE_ROWS as usize)
    })
    .await;
    let envelopes = match read {
        Ok(Ok(envelopes)) => envelopes,
        Ok(Err(error)) => {
            let page = message_page("Cannot read the log", &error.to_string(), last);
            return shared.respond(&query, StatusCode::SERVICE_UNAVAILABLE, page);
        }
        Err(error) => {
            let page = message_page("Cannot read the log", &error.to_string(), last);
            return shared.respond(&query, StatusCode::INTERNAL_SERVER_ERROR, page);
        }
    };
    let page = Page {
        title: "Events".into(),
        nav: Nav::Events,
        live: Live::Append,
        seq: last,
        content: render_events(&envelopes),
    };
    shared.respond(&query, StatusCode::OK, page)
}

pub fn render_events(envelopes: &[Envelope]) -> Html {
    let mut html = Html::new();
    html.markup("<h1>Events</h1><p class=\"hint\">The log as it grows, newest last: the same as <code>banger events --follow</code>.</p>")
        .markup("<table id=\"events\"><thead><tr><th>Seq</th><th>Time</th><th>Op</th><th>Event</th><th>Summary</th></tr></thead><tbody id=\"events-body\">");
    for envelope in envelopes {
        let row = super::stream::EventRow::of(envelope);
        html.markup("<tr data-seq=\"")
            .text(row.seq)
            .markup("\"><td class=\"num\">")
            .text(row.seq)
            .markup("</td><td class=\"time\">")
            .text(&row.time)
            .markup("</td><td><code>")
            .text(row.op.as_deref().unwrap_or("-"))
            .markup("</code></td><td>")
            .text(row.event)
            .markup("</td><td>")
            .text(&row.summary)
            .markup("</td></tr>");
    }
    html.markup("</tbody></table>");
    html
}

#[cfg(test)]
mod tests {
    use banger_events::{
        Event, EventId, Handle, KernelRegistered, OpId, OpKind, Target, VmId, VmSpec,
    };
    use banger_projections::{HandleView, OpStatus, StepStatus, StepView};

    use super::*;

    /// What a hostile guest, user or file might put in any string the pages show.
    const HOSTILE: &str =
        "\"'><script>alert(1)</script><img src=x onerror=alert(2)></pre></td></table><!--";

    const NOW: u64 = 1_800_000_000_000;

    /// Every tag in `html` (real tags only: escaped text has no `<`) is one the dashboard
    /// writes, and none carries an event handler attribute.
    fn assert_only_our_markup(html: &str) {
        const TAGS: &[&str] = &[
            "h1", "h2", "span", "div", "button", "dialog", "form", "input", "p", "b", "section",
            "dl", "dt", "dd", "pre", "table", "thead", "tbody", "tr", "th", "td", "ol", "li",
            "small", "code", "a",
        ];
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("a tag ends") + start;
            let tag = &rest[start + 1..end];
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            assert!(
                TAGS.contains(&name.as_str()),
                "unexpected tag <{tag}> in {html}"
            );
            for attribute in attribute_names(&tag[name.len()..]) {
                assert!(
                    !attribute.to_ascii_lowercase().starts_with("on"),
                    "an event handler in <{tag}>"
                );
            }
            rest = &rest[end + 1..];
        }
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
    }

    /// The names of the attributes in a tag's text after its name: `name` or `name="value"`
    /// (the dashboard double-quotes every value, and escaped text holds no `"`).
    fn attribute_names(mut text: &str) -> Vec<String> {
        let mut names = Vec::new();
        loop {
            text = text.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            if text.is_empty() {
                return names;
            }
            let end = text
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(text.len());
            names.push(text[..end].to_owned());
            text = &text[end..];
            if let Some(value) = text.strip_prefix("=\"") {
                let close = value.find('"').expect("a quoted value ends");
                text = &value[close + 1..];
            }
        }
    }

    fn hostile_vm() -> VmView {
        VmView {
            id: VmId(0x1234),
            name: HOSTILE.to_owned(),
            spec: VmSpec {
                image: HOSTILE.to_owned(),
                kernel: HOSTILE.to_owned(),
                vcpus: 2,
                memory_mib: 512,
                root_disk_mib: 1024,
                work_disk_mib: 64,
            },
            state: VmState::Running,
            defined_seq: Seq(3),
            defined_at_unix_ms: NOW - 60_000,
            changed_at_unix_ms: NOW - 30_000,
            process: None,
            last_exit: Some(banger_projections::ExitView {
                pid: 7,
                exit_code: Some(1),
                signal: None,
                console_tail: HOSTILE.to_owned(),
                seq: Seq(2),
                at_unix_ms: NOW - 90_000,
            }),
            found_dead: false,
            backend: Some(banger_projections::VmBackend {
                vmm: banger_events::VmmKind::Qemu,
                reason: HOSTILE.to_owned(),
            }),
            workspace: None,
            host_key: None,
        }
    }

    fn hostile_operation() -> OperationView {
        OperationView {
            op_id: OpId(0xabcdef),
            kind: OpKind::VmStop,
            target: Target::Vm {
                vm_id: VmId(0x1234),
                name: HOSTILE.to_owned(),
            },
            parameters: HOSTILE.to_owned(),
            status: OpStatus::Running,
            steps: vec![StepView {
                name: HOSTILE.to_owned(),
                status: StepStatus::Started,
                intent: Vec::new(),
                produced: Vec::new(),
                error: Some(HOSTILE.to_owned()),
            }],
            started_seq: Seq(4),
            started_at_unix_ms: NOW - 1_000,
            finished_seq: None,
            finished_at_unix_ms: None,
            error: Some(HOSTILE.to_owned()),
            recovery: None,
        }
    }

    #[test]
    fn hostile_strings_on_the_vm_list_stay_text() {
        let rows = [VmRow {
            vm: hostile_vm(),
            operation: Some(hostile_operation()),
        }];
        let html = render_vms(&rows, NOW).into_string();
        assert_only_our_markup(&html);
        // The link to the VM's page is percent-encoded.
        assert!(html.contains("href=\"/vms/%22%27%3E%3Cscript%3E"), "{html}");
        assert!(
            html.contains(">30s<"),
            "uptime since the VM became running: {html}"
        );
    }

    #[test]
    fn a_hostile_console_name_and_error_cannot_add_markup_to_the_vm_page() {
        let detail = VmDetail {
            vm: hostile_vm(),
            handles: vec![HandleEntry {
                handle: Handle::File {
                    path: HOSTILE.to_owned(),
                },
                view: HandleView {
                    owner: Owner::Vm(VmId(0x1234)),
                    acquired_seq: Seq(5),
                },
            }],
            operations: vec![hostile_operation()],
            console: Some(format!("boot\n{HOSTILE}\n\u{1b}[31mred\0")),
        };
        let html = render_vm(&detail, "csrf-token", NOW).into_string();
        assert_only_our_markup(&html);
        // An operation holds the VM: every action is offered disabled.
        assert_eq!(
            html.matches(" disabled>").count(),
            Action::ALL.len(),
            "{html}"
        );
        // Every form carries the CSRF token and posts to the encoded name.
        assert_eq!(
            html.matches("name=\"csrf\" value=\"csrf-token\"").count(),
            Action::ALL.len()
        );
        assert!(html.contains("action=\"/vms/%22%27%3E%3Cscript%3Ealert%281%29"));
    }

    #[test]
    fn actions_offered_follow_the_state() {
        let mut detail = VmDetail {
            vm: hostile_vm(),
            handles: Vec::new(),
            operations: Vec::new(),
            console: None,
        };
        detail.vm.name = "dev".into();
        let enabled = |detail: &VmDetail| -> Vec<&'static str> {
            let html = render_vm(detail, "t", NOW).into_string();
            Action::ALL
                .into_iter()
                .filter(|action| {
                    let opener = format!("data-dialog=\"confirm-{}\"", action.name());
                    let at = html.find(&opener).unwrap();
                    let tag_end = html[at..].find('>').unwrap() + at;
                    !html[at..tag_end].contains("disabled")
                })
                .map(Action::name)
                .collect()
        };
        assert_eq!(enabled(&detail), ["stop", "restart", "delete"]);
        detail.vm.state = VmState::Stopped;
        assert_eq!(enabled(&detail), ["start", "restart", "delete"]);
    }

    #[test]
    fn hostile_catalog_entries_and_events_stay_text() {
        let image = ImageView {
            name: HOSTILE.into(),
            rootfs_path: HOSTILE.into(),
            kernel: Some(HOSTILE.into()),
            size_bytes: 1 << 20,
            sha256: HOSTILE.into(),
            source: HOSTILE.into(),
            registered_seq: Seq(1),
            registered_at_unix_ms: NOW,
        };
        assert_only_our_markup(render_images(&[image], NOW).as_str());
        // A kernel's version is read from its own banner: anyone's bytes.
        let kernel = KernelView {
            name: HOSTILE.into(),
            kernel_path: HOSTILE.into(),
            initrd_path: None,
            version: HOSTILE.into(),
            sha256: HOSTILE.into(),
            source: HOSTILE.into(),
            registered_seq: Seq(1),
            registered_at_unix_ms: NOW,
        };
        assert_only_our_markup(render_kernels(&[kernel], NOW).as_str());
        let envelope = Envelope {
            seq: Seq(9),
            event_id: EventId(1),
            op_id: Some(OpId(1)),
            cause: None,
            at_unix_ms: NOW,
            schema_version: 1,
            event: Event::KernelRegistered(KernelRegistered {
                name: "k".into(),
                kernel_path: HOSTILE.into(),
                initrd_path: None,
                version: HOSTILE.into(),
                sha256: String::new(),
                source: HOSTILE.into(),
            }),
        };
        assert_only_our_markup(render_events(&[envelope]).as_str());
    }

    #[test]
    fn the_layout_escapes_its_title_and_offers_no_inline_script() {
        let page = Page {
            title: HOSTILE.into(),
            nav: Nav::Vms,
            live: Live::Refresh,
            seq: Seq(42),
            content: Html::new(),
        };
        let html = layout(&page).into_string();
        assert!(
            html.contains("<title>&quot;&#39;&gt;&lt;script&gt;"),
            "{html}"
        );
        assert!(html.contains("data-seq=\"42\""));
        // The only script is the dashboard's own file (the CSP allows nothing else).
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains("<script src=\"/assets/dashboard.js\" defer></script>"));
    }
}
