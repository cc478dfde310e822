// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Job, JobStatus, JobDefinition, JobCost, JobTime, Affinity} from "./Types.sol";
import {InvalidJob} from "./Errors.sol";
import {Tools} from "./Tools.sol";

/// @title JobRepository
/// @notice Storage of every job. Only MetaScheduler (METASCHEDULER_ROLE) writes; anyone reads.
/// @dev Every status change, including one made through `update`, passes the protocol's transition
///      check and emits JobTransitionEvent, so the event log is a complete history of statuses.
contract JobRepository is AccessControl {
    bytes32 public constant METASCHEDULER_ROLE = keccak256("METASCHEDULER_ROLE");

    event JobCreated(bytes32 _jobId);
    event JobTransitionEvent(bytes32 _jobId, JobStatus _from, JobStatus _to);

    /// @notice The number of jobs created; the newest job's id is `bytes32(jobIdCounter)`.
    uint256 public jobIdCounter;
    /// @notice Every job by id (the whole record; `get` does the same but reverts for an unknown id).
    mapping(bytes32 => Job) public jobs;
    /// @notice The ids of a customer's jobs, oldest first (`getByCustomer` returns the whole list).
    mapping(address => bytes32[]) public jobIdByCustomer;

    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    modifier existing(bytes32 _jobId) {
        if (jobs[_jobId].jobId == bytes32(0)) revert InvalidJob();
        _;
    }

    /// @notice Stores a new job under the next id (`bytes32(counter)`); the given jobId is ignored.
    function create(Job memory _job) external onlyRole(METASCHEDULER_ROLE) returns (bytes32) {
        jobIdCounter += 1;
        bytes32 jobId = bytes32(jobIdCounter);
        _job.jobId = jobId;
        _job.time.blockNumberStateChange = block.number;
        _write(_job);
        jobIdByCustomer[_job.customerAddr].push(jobId);
        emit JobCreated(jobId);
        return jobId;
    }

    /// @notice Replaces a job's record; a changed status is checked and announced like setJobStatus.
    function update(Job memory _job) external onlyRole(METASCHEDULER_ROLE) existing(_job.jobId) {
        JobStatus current = jobs[_job.jobId].status;
        if (_job.customerAddr != jobs[_job.jobId].customerAddr) {
            jobIdByCustomer[_job.customerAddr].push(_job.jobId);
        }
        _write(_job);
        if (current != _job.status) {
            jobs[_job.jobId].status = current;
            _transition(_job.jobId, _job.status);
        }
    }

    /// @notice The job; reverts InvalidJob() for an id that was never created.
    function get(bytes32 _jobId) external view existing(_jobId) returns (Job memory) {
        return jobs[_jobId];
    }

    /// @notice Extension: the two fields the claim queue needs, without copying the whole job.
    function getStatusAndProvider(bytes32 _jobId) external view existing(_jobId) returns (JobStatus, address) {
        Job storage job = jobs[_jobId];
        return (job.status, job.providerAddr);
    }

    /// @notice Extension: status and provider of many jobs in one call (`found` false, and the other
    ///         two zero, for an id that names no job), so a supervisor's reconciler reads a slice of
    ///         its open jobs with one call instead of one per job.
    function getStatusesAndProviders(bytes32[] calldata _jobIds)
        external
        view
        returns (bool[] memory found, JobStatus[] memory statuses, address[] memory providers)
    {
        uint256 count = _jobIds.length;
        found = new bool[](count);
        statuses = new JobStatus[](count);
        providers = new address[](count);
        for (uint256 i = 0; i < count; i++) {
            Job storage job = jobs[_jobIds[i]];
            if (job.jobId == bytes32(0)) continue;
            found[i] = true;
            statuses[i] = job.status;
            providers[i] = job.providerAddr;
        }
    }

    /// @notice Ids of the jobs a customer requested, oldest first.
    function getByCustomer(address customerAddr) external view returns (bytes32[] memory) {
        return jobIdByCustomer[customerAddr];
    }

    function setJobStatus(bytes32 _jobId, JobStatus _newStatus)
        external
        onlyRole(METASCHEDULER_ROLE)
        existing(_jobId)
    {
        _transition(_jobId, _newStatus);
    }

    function setCost(bytes32 _jobId, JobCost memory _cost) external onlyRole(METASCHEDULER_ROLE) existing(_jobId) {
        jobs[_jobId].cost = _cost;
    }

    function setTime(bytes32 _jobId, JobTime memory _time) external onlyRole(METASCHEDULER_ROLE) existing(_jobId) {
        jobs[_jobId].time = _time;
    }

    function setDefinition(bytes32 _jobId, JobDefinition memory _definition)
        external
        onlyRole(METASCHEDULER_ROLE)
        existing(_jobId)
    {
        _writeDefinition(jobs[_jobId].definition, _definition);
    }

    function setCustomerAddr(bytes32 _jobId, address _customerAddr)
        external
        onlyRole(METASCHEDULER_ROLE)
        existing(_jobId)
    {
        jobs[_jobId].customerAddr = _customerAddr;
        jobIdByCustomer[_customerAddr].push(_jobId);
    }

    function setProviderAddr(bytes32 _jobId, address _providerAddr)
        external
        onlyRole(METASCHEDULER_ROLE)
        existing(_jobId)
    {
        jobs[_jobId].providerAddr = _providerAddr;
    }

    function setJobName(bytes32 _jobId, bytes32 _jobName) external onlyRole(METASCHEDULER_ROLE) existing(_jobId) {
        jobs[_jobId].jobName = _jobName;
    }

    function setHasCancelRequest(bytes32 _jobId, bool _hasCancelRequest)
        external
        onlyRole(METASCHEDULER_ROLE)
        existing(_jobId)
    {
        jobs[_jobId].hasCancelRequest = _hasCancelRequest;
    }

    function setLastError(bytes32 _jobId, string memory _error) external onlyRole(METASCHEDULER_ROLE) existing(_jobId) {
        jobs[_jobId].lastError = _error;
    }

    function setExitCode(bytes32 _jobId, int64 _exitCode) external onlyRole(METASCHEDULER_ROLE) existing(_jobId) {
        jobs[_jobId].exitCode = _exitCode;
    }

    function _transition(bytes32 _jobId, JobStatus _newStatus) private {
        Job storage job = jobs[_jobId];
        JobStatus from = job.status;
        Tools.requireTransition(from, _newStatus);
        job.status = _newStatus;
        job.time.blockNumberStateChange = block.number;
        emit JobTransitionEvent(_jobId, from, _newStatus);
    }

    function _write(Job memory _job) private {
        Job storage job = jobs[_job.jobId];
        job.jobId = _job.jobId;
        job.status = _job.status;
        job.customerAddr = _job.customerAddr;
        job.providerAddr = _job.providerAddr;
        _writeDefinition(job.definition, _job.definition);
        job.cost = _job.cost;
        job.time = _job.time;
        job.jobName = _job.jobName;
        job.hasCancelRequest = _job.hasCancelRequest;
        job.lastError = _job.lastError;
        job.exitCode = _job.exitCode;
    }

    function _writeDefinition(JobDefinition storage target, JobDefinition memory source) private {
        target.gpus = source.gpus;
        target.memPerCpu = source.memPerCpu;
        target.cpusPerTask = source.cpusPerTask;
        target.ntasks = source.ntasks;
        target.batchLocationHash = source.batchLocationHash;
        target.storageType = source.storageType;
        Tools.copyLabels(target.uses, source.uses);
        Affinity[] storage affinity = target.affinity;
        while (affinity.length > 0) affinity.pop();
        for (uint256 i = 0; i < source.affinity.length; i++) {
            affinity.push(source.affinity[i]);
        }
    }
}
