"""A Proxmox VE API simulator for the PVE providers' tests (and demos, see __main__)."""

from tests.pve_sim.server import FAULT_KINDS, Call, Fault, PveSimulator

__all__ = ["FAULT_KINDS", "Call", "Fault", "PveSimulator"]
