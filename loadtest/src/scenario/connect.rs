//! `connect`: no traffic. The run opens the population, lets it idle with
//! heartbeats, samples the server's RSS and reports the connect rate and
//! memory per connection; all of that is common to every scenario, so this
//! one adds nothing but the absence of a workload.

use crate::traffic::Workload;

pub fn workload() -> Option<Box<dyn Workload>> {
    None
}
