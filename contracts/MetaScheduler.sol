// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/security/ReentrancyGuard.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Job, JobStatus, JobDefinition, JobCost, ProviderPrices} from "./Types.sol";
import {
    CustomerMetaSchedulerProviderOnly,
    CustomerOnly,
    InsufficientFunds,
    InvalidJobDefinition,
    JobHotStatusOnly,
    JobProviderOnly,
    MetaScheduledScheduledStatusOnly,
    NewJobRequestDisabled,
    NoJob,
    NoSpendingAuthority,
    ProviderNotJoined,
    RemainingTimeAboveLimit,
    RunningColdStatusOnly,
    RunningScheduledStatusOnly
} from "./Errors.sol";
import {Tools} from "./Tools.sol";
import {Constants} from "./Constants.sol";
import {JobRepository} from "./JobRepository.sol";
import {ProviderManager} from "./ProviderManager.sol";
import {ProviderJobQueues} from "./ProviderJobQueues.sol";

/// @title MetaScheduler
/// @notice The grid's entry point. Customers lock credits in jobs; the off-chain meta-scheduler
///         (METASCHEDULER_ROLE) assigns them to providers; providers claim them, report their statuses
///         and are paid at settlement, while customers get back what was not spent.
/// @dev Credits held here always equal the locked credits of hot jobs plus the grid's accumulated cut:
///      `withdrawAdmin` can take only that cut, never customers' locked credits.
contract MetaScheduler is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    bytes32 public constant METASCHEDULER_ROLE = keccak256("METASCHEDULER_ROLE");

    event NewJobRequestEvent(bytes32 _jobId, address _customerAddr);
    event ClaimJobEvent(
        address customerAddr, address providerAddr, bytes32 jobId, uint64 maxDurationMinute, JobDefinition jobDefinition
    );
    event ClaimNextCancellingJobEvent(address customerAddr, address providerAddr, bytes32 jobId);
    event ClaimNextTopUpJobEvent(bytes32 _jobId, address _providerAddr, uint64 maxDurationMinute);
    event JobRefusedEvent(bytes32 _jobId, address _providerAddr, address _customerAddr);
    event BilledTooMuchEvent(bytes32 _jobId, address _providerAddr, uint256 _billingAmount);

    IERC20 public immutable credit;
    Constants public immutable constants;
    ProviderManager public immutable providerManager;
    ProviderJobQueues public immutable providerJobQueues;
    JobRepository public immutable jobs;

    bool public enableRequestNewJob = true;
    /// @notice Extension: the grid's cut accumulated from settlements and not yet withdrawn.
    uint256 public withdrawableCut;

    constructor(
        IERC20 _credit,
        Constants _constants,
        ProviderManager _providerManager,
        ProviderJobQueues _providerJobQueues,
        JobRepository _jobs
    ) {
        credit = _credit;
        constants = _constants;
        providerManager = _providerManager;
        providerJobQueues = _providerJobQueues;
        jobs = _jobs;
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    modifier onlyJoinedProvider() {
        if (!providerManager.isValidForScheduling(msg.sender)) revert ProviderNotJoined();
        _;
    }

    // ---------------------------------------------------------------- customers

    /// @notice Locks `_lockedCredits` (pulled with transferFrom) in a new PENDING job and returns its id.
    function requestNewJob(
        JobDefinition memory _definition,
        uint256 _lockedCredits,
        bytes32 _jobName,
        bool _delegateSpendingAuthority
    ) external nonReentrant returns (bytes32) {
        if (!enableRequestNewJob) revert NewJobRequestDisabled();
        uint256 minimum = constants.minimumAmount();
        if (_lockedCredits < minimum) revert InsufficientFunds(_lockedCredits, minimum);
        if (!Tools.isValidDefinition(_definition)) revert InvalidJobDefinition();

        Job memory job;
        job.status = JobStatus.PENDING;
        job.customerAddr = msg.sender;
        job.definition = _definition;
        job.cost = JobCost({
            maxCost: _lockedCredits,
            finalCost: 0,
            pendingTopUp: 0,
            delegateSpendingAuthority: _delegateSpendingAuthority
        });
        job.time.submit = block.timestamp;
        job.jobName = _jobName;
        bytes32 jobId = jobs.create(job);

        credit.safeTransferFrom(msg.sender, address(this), _lockedCredits);
        emit NewJobRequestEvent(jobId, msg.sender);
        return jobId;
    }

    /// @notice Cancels a hot job: at once with a full refund unless it runs; a running job is handed to
    ///         its provider's cancelling queue and billed for the time used when the provider reports it.
    function cancelJob(bytes32 _jobId) external nonReentrant {
        Job memory job = jobs.get(_jobId);
        if (!Tools.isHot(job.status)) revert JobHotStatusOnly(job.status);
        if (msg.sender != job.customerAddr) revert CustomerOnly(msg.sender, job.customerAddr);
        if (job.hasCancelRequest) return;

        jobs.setHasCancelRequest(_jobId, true);
        job.time.cancelRequestTimestamp = block.timestamp;
        if (job.status == JobStatus.RUNNING) {
            jobs.setTime(_jobId, job.time);
            providerJobQueues.pushCancellingJob(job.providerAddr, _jobId);
        } else {
            job.time.end = block.timestamp;
            jobs.setTime(_jobId, job.time);
            jobs.setJobStatus(_jobId, JobStatus.CANCELLED);
            _refundAll(_jobId, job);
        }
    }

    /// @notice Adds `_amount` credits (pulled from the caller) to a scheduled or running job.
    function topUpJob(bytes32 _jobId, uint256 _amount) external nonReentrant {
        Job memory job = jobs.get(_jobId);
        _topUp(_jobId, job, msg.sender, _amount);
    }

    /// @notice Adds one slice of credits from the customer's allowance when the job is about to run out.
    ///         Callable by the customer, the meta-scheduler or the job's provider, only for jobs whose
    ///         customer delegated spending authority.
    function topUpJobDelegate(bytes32 _jobId) external nonReentrant {
        Job memory job = jobs.get(_jobId);
        if (
            msg.sender != job.customerAddr && msg.sender != job.providerAddr
                && !hasRole(METASCHEDULER_ROLE, msg.sender)
        ) revert CustomerMetaSchedulerProviderOnly();
        if (!job.cost.delegateSpendingAuthority) revert NoSpendingAuthority();
        if (job.status != JobStatus.SCHEDULED && job.status != JobStatus.RUNNING) {
            revert RunningScheduledStatusOnly(job.status);
        }
        uint256 perMin = _creditsPerMin(job);
        uint256 remaining = Tools.remainingMinutes(job, perMin);
        uint256 slice = constants.topUpSliceDurationMin();
        if (remaining > slice) revert RemainingTimeAboveLimit(remaining, slice);
        _topUp(_jobId, job, job.customerAddr, slice * perMin);
    }

    function setDelegateSpendingAuthority(bytes32 _jobId, bool _delegateSpendingAuthority) external {
        Job memory job = jobs.get(_jobId);
        if (!Tools.isHot(job.status)) revert JobHotStatusOnly(job.status);
        if (msg.sender != job.customerAddr) revert CustomerOnly(msg.sender, job.customerAddr);
        job.cost.delegateSpendingAuthority = _delegateSpendingAuthority;
        jobs.setCost(_jobId, job.cost);
    }

    // ---------------------------------------------------------------- meta-scheduler (oracle)

    /// @notice Assigns a PENDING job to a provider and queues it for the provider's claim.
    function metaSchedule(bytes32 _jobId, address _providerAddr) external onlyRole(METASCHEDULER_ROLE) {
        if (!providerManager.isValidForScheduling(_providerAddr)) revert ProviderNotJoined();
        jobs.setProviderAddr(_jobId, _providerAddr);
        jobs.setJobStatus(_jobId, JobStatus.META_SCHEDULED);
        providerJobQueues.pushClaimableJob(_providerAddr, _jobId);
    }

    /// @notice Ends a hot job that cannot go on (lost by its provider, for example) with a full refund.
    function panicJob(bytes32 _jobId, string memory _lastError) external onlyRole(METASCHEDULER_ROLE) nonReentrant {
        Job memory job = jobs.get(_jobId);
        if (!Tools.isHot(job.status)) revert JobHotStatusOnly(job.status);
        job.time.panicTimestamp = block.timestamp;
        job.time.end = block.timestamp;
        jobs.setTime(_jobId, job.time);
        jobs.setLastError(_jobId, _lastError);
        jobs.setJobStatus(_jobId, JobStatus.PANICKED);
        _refundAll(_jobId, job);
    }

    /// @notice Returns a job its provider did not claim in time to PENDING, as refuseJob does.
    function timeoutJob(bytes32 _jobId) external onlyRole(METASCHEDULER_ROLE) {
        Job memory job = jobs.get(_jobId);
        if (!Tools.isHot(job.status)) revert JobHotStatusOnly(job.status);
        _returnToPending(_jobId, job);
    }

    // ---------------------------------------------------------------- providers

    /// @notice Claims the provider's next meta-scheduled job (stale queue entries are skipped).
    function claimNextJob() external onlyJoinedProvider {
        _claimNext();
    }

    /// @notice Extension: claims up to `_max` of the provider's next meta-scheduled jobs in one
    ///         transaction (one ClaimJobEvent each), so a burst costs a few transactions instead of
    ///         one per job; NoJob() when none is claimable.
    function claimNextJobs(uint256 _max) external onlyJoinedProvider {
        uint256 count = providerJobQueues.countClaimableJobs(msg.sender, _max);
        if (count == 0) revert NoJob();
        for (uint256 i = 0; i < count; i++) _claimNext();
    }

    function _claimNext() private {
        bytes32 jobId = providerJobQueues.popNextClaimableJob(msg.sender);
        Job memory job = jobs.get(jobId);
        jobs.setJobStatus(jobId, JobStatus.SCHEDULED);
        uint64 maxDuration = Tools.durationMinute(job.cost.maxCost, _creditsPerMin(job));
        emit ClaimJobEvent(job.customerAddr, msg.sender, jobId, maxDuration, job.definition);
    }

    /// @notice Claims the provider's next running job that its customer asked to cancel.
    function claimNextCancellingJob() external onlyJoinedProvider {
        bytes32 jobId = providerJobQueues.popNextCancellingJob(msg.sender);
        Job memory job = jobs.get(jobId);
        emit ClaimNextCancellingJobEvent(job.customerAddr, msg.sender, jobId);
    }

    /// @notice Claims the provider's next topped-up job, with the minutes its pending top-up buys.
    function claimNextTopUpJob() external onlyJoinedProvider {
        bytes32 jobId = providerJobQueues.popNextTopUpJob(msg.sender);
        Job memory job = jobs.get(jobId);
        uint64 extraMinutes = Tools.durationMinute(job.cost.pendingTopUp, _creditsPerMin(job));
        job.cost.pendingTopUp = 0;
        jobs.setCost(jobId, job.cost);
        emit ClaimNextTopUpJobEvent(jobId, msg.sender, extraMinutes);
    }

    /// @notice Reports RUNNING or an end status. An end after RUNNING settles the job: the provider is
    ///         paid for `_jobDurationMinute` (at least one, clamped to the elapsed time plus a tolerance,
    ///         capped at the locked credits), the grid keeps its cut, the customer gets the rest back.
    ///         An end before RUNNING refunds the customer in full.
    function providerSetJobStatus(
        bytes32 _jobId,
        JobStatus _nextJobStatus,
        uint64 _jobDurationMinute,
        string memory _lastError,
        int64 _exitCode
    ) external onlyJoinedProvider nonReentrant {
        Job memory job = jobs.get(_jobId);
        if (msg.sender != job.providerAddr) revert JobProviderOnly(msg.sender, job.providerAddr);
        if (_nextJobStatus != JobStatus.RUNNING && Tools.isHot(_nextJobStatus)) {
            revert RunningColdStatusOnly(_nextJobStatus);
        }
        if (_nextJobStatus == JobStatus.RUNNING) {
            job.time.start = block.timestamp;
        } else {
            job.time.end = block.timestamp;
        }
        jobs.setTime(_jobId, job.time);
        jobs.setJobStatus(_jobId, _nextJobStatus);
        if (bytes(_lastError).length > 0) jobs.setLastError(_jobId, _lastError);
        jobs.setExitCode(_jobId, _exitCode);

        if (_nextJobStatus == JobStatus.RUNNING) {
            providerManager.incJobCount(msg.sender);
        } else if (job.status == JobStatus.RUNNING) {
            _bill(_jobId, job, _jobDurationMinute);
        } else {
            _refundAll(_jobId, job);
        }
    }

    /// @notice Hands a meta-scheduled or scheduled job back to the meta-scheduler.
    function refuseJob(bytes32 _jobId) external onlyJoinedProvider {
        Job memory job = jobs.get(_jobId);
        if (msg.sender != job.providerAddr) revert JobProviderOnly(msg.sender, job.providerAddr);
        if (job.status != JobStatus.META_SCHEDULED && job.status != JobStatus.SCHEDULED) {
            revert MetaScheduledScheduledStatusOnly(job.status);
        }
        _returnToPending(_jobId, job);
    }

    // ---------------------------------------------------------------- admin

    function setEnableRequestNewJob(bool _enable) external onlyRole(DEFAULT_ADMIN_ROLE) {
        enableRequestNewJob = _enable;
    }

    /// @notice Sends up to the accumulated grid cut to the admin; locked credits stay untouchable.
    function withdrawAdmin(uint256 _amount) external onlyRole(DEFAULT_ADMIN_ROLE) nonReentrant {
        if (_amount > withdrawableCut) revert InsufficientFunds(withdrawableCut, _amount);
        withdrawableCut -= _amount;
        credit.safeTransfer(msg.sender, _amount);
    }

    // ---------------------------------------------------------------- internals

    function _topUp(bytes32 _jobId, Job memory job, address payer, uint256 amount) private {
        if (job.status != JobStatus.SCHEDULED && job.status != JobStatus.RUNNING) {
            revert RunningScheduledStatusOnly(job.status);
        }
        job.cost.maxCost += amount;
        job.cost.pendingTopUp += amount;
        jobs.setCost(_jobId, job.cost);
        providerJobQueues.pushTopUpJob(job.providerAddr, _jobId);
        credit.safeTransferFrom(payer, address(this), amount);
    }

    function _returnToPending(bytes32 _jobId, Job memory job) private {
        jobs.setJobStatus(_jobId, JobStatus.PENDING);
        jobs.setProviderAddr(_jobId, address(0));
        emit JobRefusedEvent(_jobId, job.providerAddr, job.customerAddr);
    }

    function _bill(bytes32 _jobId, Job memory job, uint64 durationMinute) private {
        uint256 billed = durationMinute == 0 ? 1 : durationMinute;
        uint256 elapsed = (block.timestamp - job.time.start) / 60;
        if (billed > elapsed + constants.billDurationDeltaMinute()) {
            emit BilledTooMuchEvent(_jobId, job.providerAddr, durationMinute);
            billed = elapsed;
        }
        uint256 finalCost = billed * _creditsPerMin(job);
        if (finalCost > job.cost.maxCost) finalCost = job.cost.maxCost;
        uint256 cut = (finalCost * constants.deepsquareCut()) / 100;
        _settle(_jobId, job, finalCost, cut);
    }

    function _refundAll(bytes32 _jobId, Job memory job) private {
        _settle(_jobId, job, 0, 0);
    }

    function _settle(bytes32 _jobId, Job memory job, uint256 finalCost, uint256 cut) private {
        uint256 refund = job.cost.maxCost - finalCost;
        job.cost.finalCost = finalCost;
        job.cost.pendingTopUp = 0;
        jobs.setCost(_jobId, job.cost);
        withdrawableCut += cut;
        if (finalCost - cut > 0) credit.safeTransfer(job.providerAddr, finalCost - cut);
        if (refund > 0) credit.safeTransfer(job.customerAddr, refund);
    }

    function _creditsPerMin(Job memory job) private view returns (uint256) {
        ProviderPrices memory prices = providerManager.getProviderPrices(job.providerAddr);
        return Tools.creditsPerMin(job.definition, prices);
    }
}
