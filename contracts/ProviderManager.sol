// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {DoubleLinkedList} from "./DoubleLinkedList.sol";
import {Provider, ProviderHardware, ProviderPrices, Label} from "./Types.sol";
import {
    AlreadyDone,
    ArrayLengthMismatch,
    Banned,
    Empty,
    InvalidNodesCount,
    InvalidTotalCpus,
    InvalidTotalMem,
    NoProvider,
    WaitingApprovalOnly
} from "./Errors.sol";
import {Tools} from "./Tools.sol";

/// @title ProviderManager
/// @notice Registration of compute providers: a provider proposes its hardware, prices and labels;
///         the grid's admin or meta-scheduler approves the proposal, which becomes the provider's record.
/// @dev An approved provider that registers again keeps its current record (and stays schedulable)
///      until the new proposal is approved. Test networks may switch on automatic approval.
///      Every provider with a record or a proposal is an entry of the linked list (its data is the
///      address as bytes32), so clients page through the providers with `fetchPage` and read each one
///      with `providers` and `waitingApprovalProviders`.
contract ProviderManager is AccessControl, DoubleLinkedList {
    using SafeERC20 for IERC20;

    /// @notice The MetaScheduler contract: counts jobs run.
    bytes32 public constant METASCHEDULER_CONTRACT_ROLE = keccak256("METASCHEDULER_CONTRACT_ROLE");
    /// @notice The off-chain meta-scheduler: may approve registrations like the admin.
    bytes32 public constant METASCHEDULER_ROLE = keccak256("METASCHEDULER_ROLE");

    event ProviderWaitingForApproval(address addr);
    event ProviderApproved(address addr);
    event ProviderBanChanged(address addr, bool status);
    event ProviderRemoved(address addr);
    /// @notice Extension: the test-net switch changed.
    event AutoApproveChanged(bool enabled);
    /// @notice Extension: the registration tax changed.
    event ProviderRegistrationTaxChanged(address credit, uint256 tax, address recipient);

    /// @notice Extension: when true, every valid registration is approved at once (test networks only).
    bool public autoApprove;

    /// @notice Credit-wei a provider pays with each registration (0 by default: registering is free).
    ///         Each registration is a proposal the grid's operators review, which the tax pays for.
    uint256 public PROVIDER_REGISTRATION_TAX;
    /// @notice Extension: the token the tax is paid in, and who receives it.
    IERC20 public registrationTaxCredit;
    address public registrationTaxRecipient;

    /// @notice Jobs each provider has started (one per RUNNING report).
    mapping(address => uint64) public jobCountByProvider;

    mapping(address => Provider) private _approved;
    mapping(address => Provider) private _proposals;
    mapping(address => bool) private _banned;
    mapping(address => uint256) private _listId;

    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Extension: turns automatic approval on or off (admin only; off by default).
    function setAutoApprove(bool enabled) external onlyRole(DEFAULT_ADMIN_ROLE) {
        autoApprove = enabled;
        emit AutoApproveChanged(enabled);
    }

    /// @notice Extension: sets the registration tax in `_credit` tokens, paid to `_recipient` (admin only).
    ///         A non-zero tax makes `register` pull it with transferFrom: the provider approves it first.
    function setProviderRegistrationTax(IERC20 _credit, uint256 _tax, address _recipient)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        if (_tax > 0 && (address(_credit) == address(0) || _recipient == address(0))) revert Empty();
        registrationTaxCredit = _credit;
        PROVIDER_REGISTRATION_TAX = _tax;
        registrationTaxRecipient = _recipient;
        emit ProviderRegistrationTaxChanged(address(_credit), _tax, _recipient);
    }

    /// @notice Proposes the caller's hardware, prices and labels for approval (paying the tax, if any).
    function register(ProviderHardware memory _hardware, ProviderPrices memory _prices, Label[] memory _labels)
        external
    {
        if (_hardware.nodes == 0) revert InvalidNodesCount();
        uint256 nodes = _hardware.nodes;
        if (
            _hardware.gpusPerNode.length != nodes || _hardware.cpusPerNode.length != nodes
                || _hardware.memPerNode.length != nodes
        ) revert ArrayLengthMismatch();
        uint256 totalCpus;
        uint256 totalMem;
        for (uint256 i = 0; i < nodes; i++) {
            totalCpus += _hardware.cpusPerNode[i];
            totalMem += _hardware.memPerNode[i];
        }
        if (totalCpus == 0) revert InvalidTotalCpus();
        if (totalMem == 0) revert InvalidTotalMem();
        if (_banned[msg.sender]) revert Banned();
        for (uint256 i = 0; i < _labels.length; i++) {
            // A label without a key can never be matched by a job's `uses` or `affinity`.
            if (bytes(_labels[i].key).length == 0) revert Empty();
        }

        uint256 tax = PROVIDER_REGISTRATION_TAX;
        if (tax > 0) registrationTaxCredit.safeTransferFrom(msg.sender, registrationTaxRecipient, tax);
        if (_listId[msg.sender] == 0) _listId[msg.sender] = _addTail(bytes32(uint256(uint160(msg.sender))));

        Provider storage proposal = _proposals[msg.sender];
        proposal.addr = msg.sender;
        proposal.providerHardware = _hardware;
        proposal.providerPrices = _prices;
        Tools.copyLabels(proposal.labels, _labels);
        emit ProviderWaitingForApproval(msg.sender);
        if (autoApprove) _approve(msg.sender);
    }

    /// @notice Makes the provider's pending proposal its record (admin or meta-scheduler).
    function approve(address _providerAddr) external {
        if (!hasRole(DEFAULT_ADMIN_ROLE, msg.sender)) _checkRole(METASCHEDULER_ROLE);
        if (_proposals[_providerAddr].addr == address(0)) revert WaitingApprovalOnly();
        _approve(_providerAddr);
    }

    function ban(address _providerAddr) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_banned[_providerAddr]) revert AlreadyDone();
        _banned[_providerAddr] = true;
        emit ProviderBanChanged(_providerAddr, true);
    }

    function unban(address _providerAddr) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (!_banned[_providerAddr]) revert AlreadyDone();
        _banned[_providerAddr] = false;
        emit ProviderBanChanged(_providerAddr, false);
    }

    /// @notice Forgets the provider's record and proposal; a ban stays in force.
    function remove(address _providerAddr) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_approved[_providerAddr].addr == address(0) && _proposals[_providerAddr].addr == address(0)) {
            revert NoProvider();
        }
        delete _approved[_providerAddr];
        delete _proposals[_providerAddr];
        uint256 listId = _listId[_providerAddr];
        if (listId != 0) {
            _remove(listId);
            delete _listId[_providerAddr];
        }
        emit ProviderRemoved(_providerAddr);
    }

    function incJobCount(address _providerAddr) external onlyRole(METASCHEDULER_CONTRACT_ROLE) {
        jobCountByProvider[_providerAddr] += 1;
    }

    function getJobCount(address _providerAddr) external view returns (uint64) {
        return jobCountByProvider[_providerAddr];
    }

    /// @notice The approved record without its labels (see `getLabels`); zero address when there is none.
    function providers(address _providerAddr)
        external
        view
        returns (
            address addr,
            ProviderHardware memory providerHardware,
            ProviderPrices memory providerPrices,
            bool isBanned_
        )
    {
        Provider storage record = _approved[_providerAddr];
        return (record.addr, record.providerHardware, record.providerPrices, _banned[_providerAddr]);
    }

    /// @notice The pending proposal without its labels; zero address when there is none.
    function waitingApprovalProviders(address _providerAddr)
        external
        view
        returns (
            address addr,
            ProviderHardware memory providerHardware,
            ProviderPrices memory providerPrices,
            bool isBanned_
        )
    {
        Provider storage proposal = _proposals[_providerAddr];
        return (proposal.addr, proposal.providerHardware, proposal.providerPrices, _banned[_providerAddr]);
    }

    /// @notice The approved record (zero address in `addr` when there is none).
    function getProvider(address _providerAddr) external view returns (Provider memory provider) {
        provider = _approved[_providerAddr];
        provider.isBanned = _banned[_providerAddr];
    }

    /// @notice The pending proposal (zero address in `addr` when there is none).
    function getWaitingForApprovalProvider(address _providerAddr) external view returns (Provider memory provider) {
        provider = _proposals[_providerAddr];
        provider.isBanned = _banned[_providerAddr];
    }

    function getProviderHardware(address _providerAddr) external view returns (ProviderHardware memory) {
        return _approved[_providerAddr].providerHardware;
    }

    function getProviderPrices(address _providerAddr) external view returns (ProviderPrices memory) {
        return _approved[_providerAddr].providerPrices;
    }

    function getLabels(address _providerAddr) external view returns (Label[] memory) {
        return _approved[_providerAddr].labels;
    }

    function isBanned(address _providerAddr) external view returns (bool) {
        return _banned[_providerAddr];
    }

    function isWaitingForApproval(address _providerAddr) external view returns (bool) {
        return _proposals[_providerAddr].addr != address(0);
    }

    /// @notice Approved and not banned: the only providers that may be given and claim jobs.
    function isValidForScheduling(address _providerAddr) external view returns (bool) {
        return _approved[_providerAddr].addr != address(0) && !_banned[_providerAddr];
    }

    function _approve(address _providerAddr) private {
        Provider storage proposal = _proposals[_providerAddr];
        Provider storage record = _approved[_providerAddr];
        record.addr = _providerAddr;
        record.providerHardware = proposal.providerHardware;
        record.providerPrices = proposal.providerPrices;
        Tools.copyLabels(record.labels, proposal.labels);
        delete _proposals[_providerAddr];
        emit ProviderApproved(_providerAddr);
    }
}
