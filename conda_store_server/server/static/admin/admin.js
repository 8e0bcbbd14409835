// The admin pages' behaviour: confirmations, and the build page following its build live.
// No library: EventSource and fetch are enough, and nothing is loaded from elsewhere.
"use strict";

const FINAL = ["COMPLETED", "FAILED", "CANCELED"];

function confirmForms() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

// The build page: log lines arrive as Server-Sent Events (one event per line, `end` when the
// build is final); the status is polled about every second while the build runs. When a build
// that was running ends, the page reloads once to list its packages and artifacts.
function followBuild(facts) {
  const api = facts.dataset.api;
  const log = document.getElementById("build-log");
  const statusBadge = document.getElementById("build-status");
  const statusInfo = document.getElementById("build-status-info");
  const logState = document.getElementById("log-state");
  const wasRunning = !FINAL.includes(facts.dataset.status);
  let status = facts.dataset.status;
  let logEnded = false;

  function showStatus(next, info) {
    status = next;
    facts.dataset.status = next;
    statusBadge.textContent = next;
    statusBadge.className = "status status-" + next.toLowerCase();
    if (info !== undefined && info !== null) statusInfo.textContent = info;
    if (FINAL.includes(next) && logEnded && wasRunning) window.location.reload();
  }

  function appendLine(line) {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(line + "\n");
    log.dataset.lines = String(Number(log.dataset.lines || 0) + 1);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function endLog() {
    logEnded = true;
    logState.firstChild.textContent = "The build has ended. ";
    if (FINAL.includes(status) && wasRunning) window.location.reload();
  }

  // Without the stream (an older server, a proxy that buffers it): the plain log, polled.
  async function pollLog() {
    try {
      const response = await fetch(api + "logs/", {credentials: "same-origin"});
      if (response.ok) log.textContent = await response.text();
    } catch (error) {
      // a failed poll is retried below
    }
    if (FINAL.includes(status)) endLog();
    else window.setTimeout(pollLog, 1000);
  }

  const source = new EventSource(api + "logs/stream");
  source.onmessage = (event) => appendLine(event.data);
  source.addEventListener("end", (event) => {
    source.close();
    let final = {};
    try {
      final = JSON.parse(event.data);
    } catch (error) {
      final = {};
    }
    endLog();
    if (final.status) showStatus(final.status, final.status_info);
  });
  source.onerror = () => {
    // EventSource reconnects by itself (resuming at Last-Event-ID) unless it gave up
    if (source.readyState === EventSource.CLOSED && !logEnded) pollLog();
  };

  async function pollStatus() {
    try {
      const response = await fetch(api, {credentials: "same-origin"});
      if (response.ok) {
        const build = (await response.json()).data;
        showStatus(build.status, build.status_info);
      }
    } catch (error) {
      // retried below
    }
    if (!FINAL.includes(status)) window.setTimeout(pollStatus, 1000);
  }
  if (wasRunning) window.setTimeout(pollStatus, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  confirmForms();
  const facts = document.querySelector("[data-build-id]");
  if (facts) followBuild(facts);
});
