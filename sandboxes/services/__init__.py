"""The service layer: every write, and the only code that calls providers.

Modules by concern: ``lifecycle`` (create/start/stop/pause/resume/hibernate/delete),
``interactive`` (exec, services, wake-on, settings), ``snapshots`` (versions), ``teams``,
``tokens``; ``transitions`` and ``leases`` hold the compare-and-set machinery. The
background work: ``sweep`` runs ``reconcile`` (stuck operations, drift), ``gc`` (TTLs,
failed sandboxes, snapshot retention), ``idle`` and ``orphans`` over one ``inventory`` of
the providers; ``scheduled`` is how the scheduler asks for an operation.
Service functions take keyword arguments and an ``Actor``; they raise
``sandboxes.services.errors.ServiceError`` subclasses and write the audit trail.
"""
